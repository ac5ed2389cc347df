//! Splitting a CSV file for `keys import` into chunks that one import call
//! takes (the server refuses a file over 5 MiB), and mapping the line numbers
//! the server reports for a chunk back to the lines of the whole file.
//!
//! A chunk is the file's header (every byte before the first row, a byte
//! order mark included) followed by a run of whole rows copied byte for byte,
//! so a row keeps its place relative to the others: line `L` of a chunk is
//! line `L - header_lines + first_line - 1` of the file. Rows are found with
//! the same `csv` reader the server parses with, so a quoted cell that spans
//! lines is never cut.

use std::ops::Range;

/// One import call's worth of rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The rows' bytes in the file (whole rows, with their line ends).
    pub rows: Range<usize>,
    /// How many rows.
    pub row_count: usize,
    /// The file's line (1-based) on which the first row starts.
    pub first_line: u64,
}

/// A CSV file cut into chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunks {
    /// The header's bytes, repeated at the top of every chunk.
    pub header: Range<usize>,
    /// The line on which the rows start in every chunk (and in the file).
    pub rows_line: u64,
    /// The chunks, in file order; one chunk without rows when the file has
    /// none (so the server still checks the header).
    pub chunks: Vec<Chunk>,
}

impl Chunks {
    /// The bytes of chunk `i` of `file`: the header, then its rows.
    pub fn body(&self, file: &[u8], i: usize) -> Vec<u8> {
        let c = &self.chunks[i];
        let mut out = Vec::with_capacity(self.header.len() + c.rows.len());
        out.extend_from_slice(&file[self.header.clone()]);
        out.extend_from_slice(&file[c.rows.clone()]);
        out
    }

    /// The file's line for line `line` of chunk `i` (0, "unknown", stays 0;
    /// a header line stays as it is).
    pub fn file_line(&self, i: usize, line: u64) -> u64 {
        if line < self.rows_line {
            return line;
        }
        line - self.rows_line + self.chunks[i].first_line
    }
}

/// Cuts `file` into chunks of at most `max_bytes` (header included) and at
/// most `max_rows` rows. Fails when the file has no header line, or when one
/// row cannot fit in a chunk.
pub fn split(file: &[u8], max_bytes: usize, max_rows: Option<usize>) -> Result<Chunks, String> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(file);
    let mut rec = csv::ByteRecord::new();
    // Every row's (first byte, first line); the header is record 0.
    let mut starts: Vec<(usize, u64)> = Vec::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {
                let p = rec.position().expect("a record read from a reader has a position");
                starts.push((p.byte() as usize, p.line()));
            }
            Ok(false) => break,
            Err(e) => return Err(format!("cannot read the CSV: {e}")),
        }
    }
    if starts.is_empty() {
        return Err("the file is empty; line 1 must be a header with at least Name and Key".into());
    }
    let rows = &starts[1..];
    let header_end = rows.first().map(|r| r.0).unwrap_or(file.len());
    let header = 0..header_end;
    let rows_line = rows.first().map(|r| r.1).unwrap_or(2);
    let room = max_bytes.saturating_sub(header.len());
    let max_rows = max_rows.unwrap_or(usize::MAX).max(1);
    let mut chunks = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let (start, first_line) = rows[i];
        let mut end_row = i;
        loop {
            let next_start = rows.get(end_row + 1).map(|r| r.0).unwrap_or(file.len());
            if next_start - start > room || end_row - i == max_rows {
                break;
            }
            end_row += 1;
            if end_row == rows.len() {
                break;
            }
        }
        if end_row == i {
            return Err(format!(
                "line {first_line}: the row does not fit in one import call ({} MiB at most, header included)",
                max_bytes / (1024 * 1024)
            ));
        }
        let end = rows.get(end_row).map(|r| r.0).unwrap_or(file.len());
        chunks.push(Chunk { rows: start..end, row_count: end_row - i, first_line });
        i = end_row;
    }
    if chunks.is_empty() {
        chunks.push(Chunk { rows: header_end..header_end, row_count: 0, first_line: rows_line });
    }
    Ok(Chunks { header, rows_line, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::csv_import;

    /// Every row the server would read from the whole file, with its line,
    /// is read from the chunks, with the same line once mapped back.
    fn same_rows_as_the_whole(file: &str, c: &Chunks) {
        let (whole, whole_warnings) = csv_import::parse(file.as_bytes()).unwrap();
        let (mut rows, mut warnings) = (Vec::new(), Vec::new());
        for i in 0..c.chunks.len() {
            let (r, w) = csv_import::parse(&c.body(file.as_bytes(), i)).unwrap();
            rows.extend(r.into_iter().map(|mut r| {
                r.line = c.file_line(i, r.line.into()) as u32;
                r
            }));
            warnings.extend(w.into_iter().map(|mut w| {
                w.line = c.file_line(i, w.line.into()) as u32;
                w
            }));
        }
        assert_eq!(rows, whole);
        assert_eq!(warnings, whole_warnings);
    }

    #[test]
    fn chunks_keep_line_numbers() {
        // A BOM, a blank line after the header, a quoted cell over two lines,
        // CRLF line ends, bad rows (warnings name their lines), no final newline.
        let file = "\u{feff}Name,Key,Description,Enabled\n\n\
                    a,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,one,true\r\n\
                    b,bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb,\"two\nlines\",false\n\
                    c,short,bad value,true\n\
                    d,dddddddddddddddddddddddddddddd,,maybe\n\
                    \n\
                    e,eeeeeeeeeeeeeeeeeeeeeeeeeeeeee,last,true";
        for max_rows in [1, 2, 3, 100] {
            let c = split(file.as_bytes(), 1024, Some(max_rows)).unwrap();
            assert_eq!(c.chunks.iter().map(|c| c.row_count).sum::<usize>(), 5, "{max_rows}: {c:?}");
            assert_eq!(c.chunks.len(), 5usize.div_ceil(max_rows), "{c:?}");
            same_rows_as_the_whole(file, &c);
        }
        let c = split(file.as_bytes(), 1024, Some(1)).unwrap();
        // The lines are the csv reader's, as the server reports them for the
        // whole file: a row's line is where the reader was when the row began
        // (before a blank line or the LF of a CRLF), so not always the line
        // the row's text is on.
        assert_eq!(c.rows_line, 2);
        assert_eq!(c.chunks.iter().map(|c| c.first_line).collect::<Vec<_>>(), [2, 3, 6, 7, 8]);
        // Line 2 of the fourth chunk (d) is line 7 of the file.
        assert_eq!(c.file_line(3, 2), 7);
        assert_eq!((c.file_line(3, 0), c.file_line(3, 1)), (0, 1), "unknown and header lines stay");
    }

    #[test]
    fn chunks_fit_the_byte_limit() {
        let mut file = String::from("Name,Key,Enabled\n");
        for i in 0..1000 {
            file.push_str(&format!("key{i},{},true\n", crate::cli::bench::bench_key_value(i)));
        }
        let c = split(file.as_bytes(), 4096, None).unwrap();
        assert!(c.chunks.len() > 10, "{}", c.chunks.len());
        for i in 0..c.chunks.len() {
            assert!(c.body(file.as_bytes(), i).len() <= 4096);
        }
        same_rows_as_the_whole(&file, &c);
        // Contiguous: every byte of the file is in the header or one chunk.
        let mut at = c.header.end;
        for ch in &c.chunks {
            assert_eq!(ch.rows.start, at);
            at = ch.rows.end;
        }
        assert_eq!(at, file.len());
    }

    #[test]
    fn a_header_alone_and_rows_too_big() {
        let c = split(b"Name,Key\n", 100, None).unwrap();
        assert_eq!((c.chunks.len(), c.chunks[0].row_count), (1, 0));
        assert_eq!(c.body(b"Name,Key\n", 0), b"Name,Key\n");
        assert!(split(b"", 100, None).unwrap_err().contains("empty"));
        let e = split(format!("Name,Key\nx,{}\n", "y".repeat(200)).as_bytes(), 100, None).unwrap_err();
        assert!(e.starts_with("line 2: ") && e.contains("does not fit"), "{e}");
    }
}
