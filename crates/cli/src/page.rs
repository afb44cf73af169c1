//! Lists that span many answers: follow the node's pages until the user's `--limit` or the end,
//! and print each page as it arrives, so neither end ever holds more than one page. The
//! [`Pager`] decides what to ask for next and is free of IO; the commands do the calls.

use std::io::Write;

use serde::Serialize;

use crate::output::Table;
use crate::Format;

/// Where a followed list stopped: `Some(next)` when items past the user's limit remain.
pub type Stop<K> = Option<K>;

/// Which page to ask for next, from the answers so far.
#[derive(Debug)]
pub struct Pager<K> {
    left: u64,
    start_after: K,
    done: Option<Stop<K>>,
}

impl<K: Clone> Pager<K> {
    /// At most `limit` items, after `start_after`.
    pub fn new(limit: u64, start_after: K) -> Self {
        Pager { left: limit, start_after, done: None }
    }

    /// The next request's continuation and count, or `None` once the list is done.
    pub fn request(&self) -> Option<(K, u32)> {
        let count = u32::try_from(self.left).unwrap_or(u32::MAX).min(blixard_proto::MAX_LIST_LIMIT);
        self.done.is_none().then(|| (self.start_after.clone(), count))
    }

    /// Takes in an answered page: `got` items, whether `more` follow, and `next` to go on after.
    pub fn answered(&mut self, got: usize, more: bool, next: K) -> anyhow::Result<()> {
        self.left = self.left.saturating_sub(got as u64);
        if !more {
            self.done = Some(None);
        } else if got == 0 {
            // Asking again would get the same answer forever.
            anyhow::bail!("the node answered an empty page with more to follow");
        } else if self.left == 0 {
            self.done = Some(Some(next));
        } else {
            self.start_after = next;
        }
        Ok(())
    }

    /// Where the list stopped (`None` also if it is not done).
    pub fn stop(self) -> Stop<K> {
        self.done.flatten()
    }
}

/// Prints a list page by page: the table's header once (each page's rows aligned among
/// themselves), or the JSON object `{FIELD: [...], "more", "next"}` item by item, byte for byte
/// what `serde_json::to_string_pretty` makes of the whole.
pub struct Printer<W: Write> {
    fmt: Format,
    field: &'static str,
    items: usize,
    pages: usize,
    out: W,
}

impl Printer<std::io::BufWriter<std::io::StdoutLock<'static>>> {
    pub fn stdout(fmt: Format, field: &'static str) -> Self {
        Printer::new(fmt, field, std::io::BufWriter::new(std::io::stdout().lock()))
    }
}

impl<W: Write> Printer<W> {
    pub fn new(fmt: Format, field: &'static str, out: W) -> Self {
        Printer { fmt, field, items: 0, pages: 0, out }
    }

    /// Prints one page of `items`, which `table` renders for the table output.
    pub fn page<T: Serialize>(&mut self, items: &[T], table: impl FnOnce(&[T]) -> Table) -> anyhow::Result<()> {
        match self.fmt {
            Format::Table => {
                let t = table(items);
                let text = if self.pages == 0 { t.render() } else { t.render_body() };
                self.out.write_all(text.as_bytes())?;
            }
            Format::Json => {
                if self.pages == 0 {
                    write!(self.out, "{{\n  {}: [", serde_json::to_string(self.field)?)?;
                }
                for item in items {
                    let sep = if self.items == 0 { "\n" } else { ",\n" };
                    self.out.write_all(sep.as_bytes())?;
                    let pretty = serde_json::to_string_pretty(item)?;
                    for (i, line) in pretty.lines().enumerate() {
                        if i > 0 {
                            self.out.write_all(b"\n")?;
                        }
                        write!(self.out, "    {line}")?;
                    }
                    self.items += 1;
                }
            }
        }
        self.pages += 1;
        self.out.flush()?;
        Ok(())
    }

    /// Ends the list; `stop` says whether (and after what) items remain, which the table shows
    /// as the row `more`.
    pub fn finish(mut self, stop: Stop<String>, more: impl FnOnce() -> Table) -> anyhow::Result<W> {
        match self.fmt {
            Format::Table => {
                if stop.is_some() {
                    self.out.write_all(more().render_body().as_bytes())?;
                }
            }
            Format::Json => {
                let close = if self.items == 0 { "]" } else { "\n  ]" };
                let more = stop.is_some();
                let next = serde_json::to_string(&stop)?;
                write!(self.out, "{close},\n  \"more\": {more},\n  \"next\": {next}\n}}\n")?;
            }
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows pages of `[1..=n]`, at most `size` items each, up to `limit`: the items got, the
    /// counts asked for and where it stopped.
    fn run(n: u32, size: u32, limit: u64) -> (Vec<u32>, Vec<u32>, Stop<u32>) {
        let (mut got, mut asked) = (Vec::new(), Vec::new());
        let mut pager = Pager::new(limit, 0);
        while let Some((after, count)) = pager.request() {
            asked.push(count);
            let items: Vec<u32> = (after + 1..=n).take(count.min(size) as usize).collect();
            let last = items.last().copied().unwrap_or(after);
            pager.answered(items.len(), last < n, last).unwrap();
            got.extend(items);
        }
        (got, asked, pager.stop())
    }

    #[test]
    fn pages_are_followed_to_the_end_or_the_limit() {
        let (got, asked, stop) = run(10, 3, 100);
        assert_eq!((got, asked, stop), ((1..=10).collect(), vec![100, 97, 94, 91], None));
        let (got, asked, stop) = run(10, 3, 5);
        assert_eq!((got, asked, stop), (vec![1, 2, 3, 4, 5], vec![5, 2], Some(5)));
        let (got, _, stop) = run(10, 3, 10);
        assert_eq!((got.len(), stop), (10, None), "the end, exactly at the limit");
        let (_, asked, _) = run(10, 3, 1 << 40);
        assert_eq!(asked[0], blixard_proto::MAX_LIST_LIMIT);
    }

    #[test]
    fn an_empty_page_with_more_is_an_error_not_a_loop() {
        let mut pager = Pager::new(10, 0u32);
        assert!(pager.answered(0, true, 0).is_err());
        let mut pager = Pager::new(10, 0u32);
        pager.answered(0, false, 0).unwrap();
        assert_eq!((pager.request(), pager.stop()), (None, None));
    }

    #[derive(Serialize)]
    struct Item {
        key: String,
        tags: Vec<u32>,
    }

    fn printed(fmt: Format, pages: &[&[(&str, &[u32])]], stop: Stop<String>) -> String {
        let mut p = Printer::new(fmt, "items", Vec::new());
        for page in pages {
            let items: Vec<Item> = page.iter().map(|(k, t)| Item { key: k.to_string(), tags: t.to_vec() }).collect();
            p.page(&items, |items| {
                let mut t = Table::new(vec!["KEY", "TAGS"]);
                for i in items {
                    t = t.row(vec![i.key.clone(), format!("{:?}", i.tags)]);
                }
                t
            })
            .unwrap();
        }
        let out = p.finish(stop, || Table::new(vec!["KEY", "TAGS"]).row(vec!["…".into(), "more".into()])).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_printed_page_by_page_is_the_pretty_json_of_the_whole() {
        let whole = |items: serde_json::Value, more: bool, next: Option<&str>| {
            serde_json::to_string_pretty(&serde_json::json!({"items": items, "more": more, "next": next})).unwrap()
                + "\n"
        };
        let pages: &[&[(&str, &[u32])]] = &[&[("a", &[1, 2]), ("b", &[])], &[], &[("c\n\"", &[3])]];
        assert_eq!(
            printed(Format::Json, pages, Some("c".into())),
            whole(
                serde_json::json!([{"key": "a", "tags": [1, 2]}, {"key": "b", "tags": []}, {"key": "c\n\"", "tags": [3]}]),
                true,
                Some("c")
            )
        );
        assert_eq!(printed(Format::Json, &[&[]], None), whole(serde_json::json!([]), false, None));
    }

    #[test]
    fn tables_print_the_header_once_and_the_more_row_last() {
        let pages: &[&[(&str, &[u32])]] = &[&[("a", &[1])], &[("bb", &[2])]];
        assert_eq!(printed(Format::Table, pages, None), "KEY  TAGS\na    [1]\nbb   [2]\n");
        assert_eq!(printed(Format::Table, &[&[("a", &[1])]], Some("a".into())), "KEY  TAGS\na    [1]\n…    more\n");
        assert_eq!(printed(Format::Table, &[&[]], None), "KEY  TAGS\n");
    }
}
