//! Lists that span many answers: follow the node's pages until the user's `--limit` or the end,
//! and print each page as it arrives, so neither end ever holds more than one page.

use std::future::Future;
use std::io::Write;

use serde::Serialize;

use crate::output::Table;
use crate::Format;

/// One page as the node answered it: its items, whether more follow, and the key to continue
/// after.
pub struct Answer<T, K> {
    pub items: Vec<T>,
    pub more: bool,
    pub next: K,
}

/// Where a followed list stopped: `Some(next)` when items past the user's limit remain.
pub type Stop<K> = Option<K>;

/// Asks `fetch(start_after, count)` for pages until `limit` items were handed to `each` or the
/// node says there are no more.
pub async fn follow<T, K, F, Fut>(
    limit: u64,
    mut start_after: K,
    mut fetch: F,
    mut each: impl FnMut(Vec<T>) -> anyhow::Result<()>,
) -> anyhow::Result<Stop<K>>
where
    K: Clone,
    F: FnMut(K, u32) -> Fut,
    Fut: Future<Output = anyhow::Result<Answer<T, K>>>,
{
    let mut left = limit;
    loop {
        let count = u32::try_from(left).unwrap_or(u32::MAX).min(blixard_proto::MAX_LIST_LIMIT);
        let page = fetch(start_after, count).await?;
        let got = page.items.len() as u64;
        each(page.items)?;
        left = left.saturating_sub(got);
        if !page.more {
            return Ok(None);
        }
        if got == 0 {
            // Asking again would get the same answer forever.
            anyhow::bail!("the node answered an empty page with more to follow");
        }
        if left == 0 {
            return Ok(Some(page.next));
        }
        start_after = page.next;
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

    /// Pages of `[1..=n]` of at most `size` items, continuing after a number.
    async fn numbers(n: u32, size: u32, after: u32, count: u32) -> anyhow::Result<Answer<u32, u32>> {
        let items: Vec<u32> = (after + 1..=n).take(count.min(size) as usize).collect();
        let last = items.last().copied().unwrap_or(after);
        Ok(Answer { more: last < n, next: last, items })
    }

    async fn run(n: u32, size: u32, limit: u64) -> (Vec<u32>, Vec<u32>, Stop<u32>) {
        let (mut got, mut asked) = (Vec::new(), Vec::new());
        let stop = follow(
            limit,
            0,
            |after, count| {
                asked.push(count);
                numbers(n, size, after, count)
            },
            |page| {
                got.extend(page);
                Ok(())
            },
        )
        .await
        .unwrap();
        (got, asked, stop)
    }

    #[tokio::test]
    async fn pages_are_followed_to_the_end_or_the_limit() {
        let (got, asked, stop) = run(10, 3, 100).await;
        assert_eq!((got, asked, stop), ((1..=10).collect(), vec![100, 97, 94, 91], None));
        let (got, asked, stop) = run(10, 3, 5).await;
        assert_eq!((got, asked, stop), (vec![1, 2, 3, 4, 5], vec![5, 2], Some(5)));
        let (got, _, stop) = run(10, 3, 10).await;
        assert_eq!((got.len(), stop), (10, None), "the end, exactly at the limit");
        let (_, asked, _) = run(10, 3, 1 << 40).await;
        assert_eq!(asked[0], blixard_proto::MAX_LIST_LIMIT);
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

    #[tokio::test]
    async fn an_empty_page_with_more_is_an_error_not_a_loop() {
        let r =
            follow(10, 0u32, |_, _| async { Ok(Answer { items: Vec::<u32>::new(), more: true, next: 0 }) }, |_| Ok(()))
                .await;
        assert!(r.is_err());
    }
}
