//! API Gateway's CSV format for importing API keys.
//!
//! ```csv
//! Name,Key,Description,Enabled,UsagePlanIds
//! MyFirstApiKey,apikeyuniqueForMyFirstApiKey,A key for my first api,true,c7y23b
//! MySecondApiKey,apikeyuniqueForMySecondApiKey,A key for my second api,false,"c7y23b,jbgfw7"
//! ```
//!
//! `Name` and `Key` are required; `Description`, `Enabled` (default true)
//! and `UsagePlanIds` (several ids in one quoted, comma-separated cell) are
//! optional. Header names are case-insensitive and in any order; unknown
//! columns are ignored. A file-level problem (empty, no header, a required
//! column missing, not UTF-8, too big) fails the whole import; a bad row
//! becomes a warning naming its line and field. A row is held to the rules
//! of `CreateApiKey`: `Name` 1 to 1,024 characters, `Description` at most
//! 4,096, `Key` 30 to 128 of `[A-Za-z0-9]`.

use super::admin::{validate_name, validate_text, ImportRow, ImportWarning, DESCRIPTION_MAX_CHARS};
use crate::model::{validate_key_value, Invalid};

/// Largest accepted file, bytes.
pub const MAX_CSV_BYTES: usize = 5 * 1024 * 1024;

/// Parses a CSV file into rows and per-row warnings.
pub fn parse(bytes: &[u8]) -> Result<(Vec<ImportRow>, Vec<ImportWarning>), Invalid> {
    if bytes.len() > MAX_CSV_BYTES {
        return Err(Invalid::new(
            "csv",
            format!(
                "the file is {:.1} MiB; at most {} MiB can be imported at once: split it",
                bytes.len() as f64 / (1024.0 * 1024.0),
                MAX_CSV_BYTES / (1024 * 1024)
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Invalid::new("csv", format!("the file is not UTF-8 text (first bad byte at offset {})", e.valid_up_to()))
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(Invalid::new("csv", "the file is empty; line 1 must be a header with at least Name and Key"));
    }
    let mut rdr =
        csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = rdr.headers().map_err(|e| Invalid::new("csv", format!("line 1: {e}")))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(name_col), Some(key_col)) = (col("name"), col("key")) else {
        let found: Vec<&str> = headers.iter().collect();
        let missing: Vec<&str> =
            [("Name", col("name")), ("Key", col("key"))].iter().filter(|(_, c)| c.is_none()).map(|(n, _)| *n).collect();
        return Err(Invalid::new(
            "csv",
            format!(
                "line 1: the header has no {} column (found {found:?}); Name and Key are required",
                missing.join(" and ")
            ),
        ));
    };
    let desc_col = col("description");
    let enabled_col = col("enabled");
    let plans_col = col("usageplanids");

    let lines = LineStarts::of(text);
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = lines.line_of(e.position());
                warnings.push(ImportWarning { line, message: format!("cannot read the row: {e}") });
                continue;
            }
        };
        let line = lines.line_of(rec.position());
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("");
        let name = get(Some(name_col));
        let value = get(Some(key_col));
        let mut warn = |m: String| warnings.push(ImportWarning { line, message: m });
        let description = get(desc_col);
        let caps = validate_name(name)
            .map_err(|e| Invalid::new("Name", e.message))
            .and_then(|()| validate_text("Description", description, DESCRIPTION_MAX_CHARS));
        if let Err(e) = caps {
            warn(e.to_string());
            continue;
        }
        if let Err(e) = validate_key_value("Key", value) {
            warn(e.to_string());
            continue;
        }
        let enabled = match get(enabled_col).to_ascii_lowercase().as_str() {
            "" | "true" => true,
            "false" => false,
            other => {
                let shown: String = other.chars().take(20).collect();
                warn(format!("Enabled must be true or false, got {shown:?}"));
                continue;
            }
        };
        let plan_ids: Vec<String> =
            get(plans_col).split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        rows.push(ImportRow {
            line,
            name: name.to_string(),
            value: value.to_string(),
            description: description.to_string(),
            enabled,
            plan_ids,
        });
    }
    Ok((rows, warnings))
}

/// Where each line of the text starts, to name the line of a record. The
/// CSV reader ends a record at `\n`, `\r\n` or a lone `\r` (old Mac files),
/// but counts lines only at `\n`, and may place a record at the line
/// break before it; this counts all three and skips those breaks.
struct LineStarts<'a> {
    text: &'a [u8],
    starts: Vec<usize>,
}

impl<'a> LineStarts<'a> {
    fn of(text: &'a str) -> Self {
        let b = text.as_bytes();
        let mut starts = vec![0];
        for (i, &c) in b.iter().enumerate() {
            if c == b'\n' || (c == b'\r' && b.get(i + 1) != Some(&b'\n')) {
                starts.push(i + 1);
            }
        }
        Self { text: b, starts }
    }

    /// The 1-based line holding the record that starts at `pos`.
    fn line_of(&self, pos: Option<&csv::Position>) -> u32 {
        let Some(mut byte) = pos.map(|p| p.byte() as usize) else { return 1 };
        while matches!(self.text.get(byte), Some(b'\r' | b'\n')) {
            byte += 1;
        }
        u32::try_from(self.starts.partition_point(|&s| s <= byte)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::catalog::admin::import_keys;
    use crate::catalog::CatalogData;

    #[test]
    fn api_gateway_sample() {
        let csv = "Name,Key,Description,Enabled,UsagePlanIds\n\
                   MyFirstApiKey,apikeyuniqueForMyFirstApiKey000,A key for my first api,true,c7y23b\n\
                   MySecondApiKey,apikeyuniqueForMySecondApiKey00,A key for my second api,false,\"c7y23b,jbgfw7\"\n";
        let (rows, warnings) = parse(csv.as_bytes()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].plan_ids, vec!["c7y23b", "jbgfw7"]);
        assert!(!rows[1].enabled);
        assert_eq!(rows[1].line, 3);
    }

    #[test]
    fn header_case_and_order_and_unknown_columns() {
        let csv = "key,extra,NAME\napikeyuniqueForMyFirstApiKey000,x,First\n";
        let (rows, _) = parse(csv.as_bytes()).unwrap();
        assert_eq!((rows[0].name.as_str(), rows[0].enabled), ("First", true));
    }

    #[test]
    fn file_and_row_problems() {
        assert!(parse(b"").unwrap_err().message.contains("empty"));
        let e = parse(b"Name,Description\nx,y\n").unwrap_err();
        assert!(e.message.contains("no Key column"), "{e}");
        let csv = "Name,Key,Enabled\nA,apikeyuniqueForMyFirstApiKey000,maybe\nB,short,true\n";
        let (rows, w) = parse(csv.as_bytes()).unwrap();
        assert!(rows.is_empty());
        assert_eq!(w.iter().map(|w| w.line).collect::<Vec<_>>(), vec![2, 3]);
        assert!(w[0].message.contains("Enabled"));
        let big = vec![b'a'; MAX_CSV_BYTES + 1];
        assert!(parse(&big).unwrap_err().message.contains("MiB"));
    }

    /// Defect 7: Description was not capped at all (CreateApiKey caps it at
    /// 4,096 characters); Name is held to CreateApiKey's rule too.
    #[test]
    fn rows_over_the_caps_are_warnings_naming_line_and_field() {
        let key = |i: u32| format!("apikeyuniqueForMyFirstApiKey{i:03}");
        let csv = format!(
            "Name,Key,Description\nok,{},{}\n{},{},d\nlong,{},{}\n",
            key(1),
            "d".repeat(4096),
            "n".repeat(1025),
            key(2),
            key(3),
            "\u{e9}".repeat(4097)
        );
        let (rows, w) = parse(csv.as_bytes()).unwrap();
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2]);
        assert_eq!(w.iter().map(|w| w.line).collect::<Vec<_>>(), vec![3, 4]);
        assert!(w[0].message.starts_with("Name: "), "{:?}", w[0]);
        assert!(w[1].message.starts_with("Description: ") && w[1].message.contains("4096"), "{:?}", w[1]);

        let e = import_keys(&mut CatalogData::default(), rows.clone(), w.clone(), true, 1).unwrap_err();
        assert!(e.to_string().contains("line 4: Description"), "{e}");
        let (ids, warnings) = import_keys(&mut CatalogData::default(), rows, w, false, 1).unwrap();
        assert_eq!((ids.len(), warnings.len()), (1, 2));
    }

    /// Found by `mutations_of_a_valid_file`: with old Mac line endings (a
    /// lone CR) every row was said to be on line 1.
    #[test]
    fn rows_name_their_line_whatever_the_line_endings() {
        for end in ["\n", "\r\n", "\r"] {
            let csv = ["Name,Key", "A,short", "", "B,\"two\nlines\"", "C,short"].join(end);
            let (_, w) = parse(csv.as_bytes()).unwrap();
            assert_eq!(w.iter().map(|w| w.line).collect::<Vec<_>>(), vec![2, 4, 6], "{end:?}");
        }
    }

    /// A valid file to mutate.
    const SAMPLE: &str = "Name,Key,Description,Enabled,UsagePlanIds\n\
                          MyFirstApiKey,apikeyuniqueForMyFirstApiKey000,A key,true,c7y23b\n\
                          Second,apikeyuniqueForMySecondApiKey00,\"quoted, text\",false,\"c7y23b,jbgfw7\"\n";

    /// Lines as the CSV reader counts them: `\n`, `\r\n` and a lone `\r`
    /// each end one.
    fn line_count(bytes: &[u8]) -> usize {
        let ends = bytes
            .iter()
            .enumerate()
            .filter(|(i, b)| **b == b'\n' || (**b == b'\r' && bytes.get(i + 1) != Some(&b'\n')));
        ends.count() + 1
    }

    fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
        let lines = line_count(bytes);
        match parse(bytes) {
            Ok((rows, warnings)) => {
                for r in &rows {
                    prop_assert!(
                        (2..=lines).contains(&(r.line as usize)),
                        "row line {} of {lines} in {:?}",
                        r.line,
                        String::from_utf8_lossy(bytes)
                    );
                }
                for w in &warnings {
                    prop_assert!(
                        (1..=lines).contains(&(w.line as usize)),
                        "warning line {} of {lines} in {:?}: {}",
                        w.line,
                        String::from_utf8_lossy(bytes),
                        w.message
                    );
                }
            }
            Err(e) => prop_assert!(e.field == "csv" && !e.message.is_empty()),
        }
        Ok(())
    }

    /// Edits of a valid file: a byte replaced, inserted or removed.
    fn mutated(base: &'static str) -> impl Strategy<Value = Vec<u8>> {
        let edit = (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(b",\"\r\n \xef\xbb\xbfaZ0".to_vec()));
        prop::collection::vec(edit, 1..8).prop_map(move |edits| {
            let mut b = base.as_bytes().to_vec();
            for (at, op, byte) in edits {
                let i = at.index(b.len() + 1);
                match op {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => b.push(byte),
                }
            }
            b
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        /// Any bytes: no panic; every row and warning names a line of the file.
        #[test]
        fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            check(&bytes)?;
        }

        #[test]
        fn mutations_of_a_valid_file(bytes in mutated(SAMPLE)) {
            check(&bytes)?;
        }
    }
}
