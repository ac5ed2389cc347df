//! Output for people: aligned tables and `key: value` blocks.
//!
//! Cells come from the server and may hold anything a user once typed, so
//! control characters (a newline, an escape sequence that would repaint the
//! terminal) are shown escaped and cannot break the layout.

/// A table: a header row and rows of cells, printed with columns aligned.
#[derive(Debug)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| clean(&c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// How many rows were added.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, two spaces between columns, the last column unpadded.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(width(c));
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            let last = r.len().saturating_sub(1);
            let mut line = String::new();
            for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
                line.push_str(c);
                if i < last {
                    line.extend(std::iter::repeat_n(' ', w - width(c) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A `key: value` block with the values aligned.
pub fn kv(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let mut line = format!("{k}:");
        line.extend(std::iter::repeat_n(' ', w - width(k) + 1));
        line.push_str(&clean(v));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `s` with control characters escaped (`\n`, `\u{1b}`).
pub fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned() {
        let mut t = Table::new(&["ID", "NAME", "ENABLED"]);
        t.row(vec!["k1".into(), "a long name".into(), "true".into()]);
        t.row(vec!["key-two".into(), "x\ny".into()]);
        assert_eq!(t.render(), "ID       NAME         ENABLED\nk1       a long name  true\nkey-two  x\\ny\n");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn blocks() {
        assert_eq!(
            kv(&[("id", "k1".into()), ("name", "\u{1b}[2J".into()), ("empty", String::new())]),
            "id:    k1\nname:  \\u{1b}[2J\nempty:\n"
        );
    }
}
