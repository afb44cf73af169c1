//! Table and JSON rendering. JSON shapes are part of the CLI's contract (see README).

use serde::Serialize;

use crate::Format;

/// Prints `value` as pretty JSON, or `table` rendered as aligned columns.
pub fn emit<T: Serialize, R: Render>(fmt: Format, value: &T, table: impl FnOnce() -> R) {
    match fmt {
        Format::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Format::Table => print!("{}", table().render()),
    }
}

/// Anything printable as the table form.
pub trait Render {
    fn render(&self) -> String;
}

impl Render for String {
    fn render(&self) -> String {
        self.clone()
    }
}

impl Render for Table {
    fn render(&self) -> String {
        Table::render(self)
    }
}

pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Table { header, rows: Vec::new() }
    }

    pub fn row(mut self, r: Vec<String>) -> Self {
        self.rows.push(r);
        self
    }

    pub fn render(&self) -> String {
        let mut out = self.line(&self.header, &self.widths());
        out.push_str(&self.render_body());
        out
    }

    /// The rows without the header (aligned as if it were there), for a table printed in parts.
    pub fn render_body(&self) -> String {
        let w = self.widths();
        self.rows.iter().map(|r| self.line(&r.iter().map(String::as_str).collect::<Vec<_>>(), &w)).collect()
    }

    fn widths(&self) -> Vec<usize> {
        let n = self.header.len();
        let mut w: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        w
    }

    fn line(&self, cells: &[&str], w: &[usize]) -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w.get(i).copied().unwrap_or(0)));
            }
        }
        s.trim_end().to_string() + "\n"
    }
}

/// Bytes shown as text when they are UTF-8, else as hex (`value_hex` in JSON).
pub fn text_or_hex(b: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(b.iter().map(|x| format!("{x:02x}")).collect())),
    }
}
