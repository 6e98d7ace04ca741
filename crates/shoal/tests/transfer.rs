//! `shoal import` and `shoal export` against a real standalone server: a
//! 100 000-row CSV goes in and comes back out equal, JSON lines too, and a
//! row that does not fit stops the import at its line with nothing of its
//! batch applied (or is skipped and reported with `--skip-bad`). With
//! several batches in flight, rows still go in in the file's order, and a
//! batch the server refuses stops the import with nothing after it applied.

mod common;

use common::{Mode, Server, cli as shoal};

/// Runs the CLI against the server; exit status, stdout, stderr.
fn new_base(s: &Server) -> String {
    let (ok, out, err) = shoal(s, &["base", "create"]);
    assert!(ok, "{err}");
    out.split_whitespace().last().expect("an id").to_string()
}

/// A CSV's records, numbers in `numeric` columns compared as numbers.
fn normalised(text: &str, numeric: &[usize]) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
    r.records()
        .map(|rec| {
            let rec = rec.expect("a CSV record");
            rec.iter()
                .enumerate()
                .map(|(i, f)| match f.parse::<f64>() {
                    Ok(x) if numeric.contains(&i) => format!("{x}"),
                    _ => f.to_string(),
                })
                .collect()
        })
        .collect()
}

#[test]
fn a_large_csv_goes_in_and_comes_back_out_equal() {
    let (dir, s) = Server::start(Mode::Standalone, &[]);
    let base = new_base(&s);
    let mut csv = String::from("id,name,score\n");
    for i in 0..100_000u32 {
        let name = match i % 5 {
            0 => format!("plain {i}"),
            1 => format!("comma, {i}"),
            2 => format!("quote \"{i}\""),
            3 => format!("two\nlines {i}"),
            _ => String::new(),
        };
        let score = if i % 7 == 0 { String::new() } else { format!("{}.{}", i % 1000, i % 100) };
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([i.to_string(), name, score]).expect("record");
        csv.push_str(std::str::from_utf8(&w.into_inner().expect("bytes")).expect("utf-8"));
    }
    let file = dir.path().join("in.csv");
    std::fs::write(&file, &csv).expect("write");
    let (ok, out, err) = shoal(&s, &["import", &base, "t", file.to_str().expect("path")]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("imported 100000 rows"), "{out}");
    let (ok, types, err) = shoal(
        &s,
        &["sql", &base, "SELECT typeof(id), typeof(score) FROM t WHERE id = 1", "--json"],
    );
    assert!(ok && types.contains("integer") && types.contains("real"), "{types}{err}");

    let back = dir.path().join("out.csv");
    let (ok, _, err) = shoal(&s, &["export", &base, "t", "--out", back.to_str().expect("path")]);
    assert!(ok, "{err}");
    let exported = std::fs::read_to_string(&back).expect("read");
    // An empty text field comes back empty (NULL); numbers may be written
    // another way (2.0 for 2.00), so they are compared as numbers.
    assert_eq!(normalised(&exported, &[2]), normalised(&csv, &[2]));

    // JSON lines round trip through a second table.
    let lines = dir.path().join("out.jsonl");
    let (ok, _, err) = shoal(
        &s,
        &["export", &base, "t", "--format", "jsonl", "--out", lines.to_str().expect("path")],
    );
    assert!(ok, "{err}");
    let (ok, out, err) =
        shoal(&s, &["import", &base, "t2", "--format", "jsonl", lines.to_str().expect("path")]);
    assert!(ok && out.contains("imported 100000 rows"), "{out}{err}");
    let (ok, out, err) = shoal(
        &s,
        &[
            "sql",
            &base,
            "SELECT count(*) FROM t JOIN t2 USING (id) \
             WHERE t.name IS t2.name AND t.score IS t2.score",
            "--json",
        ],
    );
    assert!(ok && out.contains("100000"), "{out}{err}");
}

#[test]
fn a_bad_row_stops_the_import_at_its_line() {
    let (dir, s) = Server::start(Mode::Memory, &[]);
    let base = new_base(&s);
    let file = dir.path().join("bad.csv");
    // Lines 2-3 are one batch, lines 4-5 the next; line 5 does not fit.
    std::fs::write(&file, "n:INTEGER,label\n1,a\n2,b\n3,c\nfour,d\n5,e\n").expect("write");
    let path = file.to_str().expect("path");
    let (ok, _, err) = shoal(&s, &["import", &base, "t", path, "--batch-rows", "2"]);
    assert!(!ok, "a bad row was accepted");
    assert!(err.contains("line 5") && err.contains("\"four\""), "{err}");
    let (_, out, _) = shoal(&s, &["sql", &base, "SELECT group_concat(n) FROM t", "--json"]);
    assert!(out.contains("\"1,2\""), "only the first batch is in: {out}");

    let (ok, out, err) =
        shoal(&s, &["import", &base, "u", path, "--batch-rows", "2", "--skip-bad"]);
    assert!(ok, "{err}");
    assert!(out.contains("imported 4 rows") && out.contains("skipped 1"), "{out}");
    assert!(err.contains("line 5"), "{err}");
    // A row with too many fields, and a file that is not there.
    std::fs::write(&file, "a,b\n1,2,3\n").expect("write");
    let (ok, _, err) = shoal(&s, &["import", &base, "v", path]);
    assert!(!ok && err.contains("line 2") && err.contains("3 fields"), "{err}");
    let (ok, _, err) = shoal(&s, &["import", &base, "v", "/nonexistent/x.csv"]);
    assert!(!ok && err.contains("cannot open"), "{err}");
}

/// A CSV of `n:INTEGER,label` rows with these values of n.
fn numbered(values: impl Iterator<Item = u32>) -> String {
    let mut csv = String::from("n:INTEGER,label\n");
    for v in values {
        csv.push_str(&format!("{v},row {v}\n"));
    }
    csv
}

#[test]
fn small_batches_in_flight_keep_the_files_order() {
    let (dir, s) = Server::start(Mode::Standalone, &[]);
    let base = new_base(&s);
    let file = dir.path().join("in.csv");
    std::fs::write(&file, numbered(0..3000)).expect("write");
    let path = file.to_str().expect("path");
    let (ok, out, err) = shoal(&s, &["import", &base, "t", path, "--batch-rows", "7"]);
    assert!(ok && out.contains("imported 3000 rows"), "{out}{err}");
    // The rows went in in the file's order: row n has the (n+1)th rowid.
    let (ok, out, err) = shoal(
        &s,
        &["sql", &base, "SELECT count(*), sum(n = rowid - 1) FROM t", "--json", "--read"],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["rows"][0], serde_json::json!([3000, 3000]), "{out}");
}

#[test]
fn a_batch_the_server_refuses_stops_the_import_with_nothing_after_it() {
    let (dir, s) = Server::start(Mode::Memory, &[]);
    let base = new_base(&s);
    let (ok, _, err) =
        shoal(&s, &["sql", &base, "CREATE TABLE t (n INTEGER UNIQUE, label TEXT)", "--write"]);
    assert!(ok, "{err}");
    // Batches of 10 rows; the sixth (lines 52-61) repeats n = 3, which the
    // table refuses. The batches after it are sent before it is refused.
    let values = (0..200).map(|i| if i == 55 { 3 } else { i });
    let file = dir.path().join("dup.csv");
    std::fs::write(&file, numbered(values)).expect("write");
    let path = file.to_str().expect("path");
    let (ok, _, err) = shoal(&s, &["import", &base, "t", path, "--batch-rows", "10"]);
    assert!(!ok, "a refused batch was accepted");
    assert!(err.contains("lines 52-61") && err.contains("UNIQUE"), "{err}");
    let (_, out, _) = shoal(
        &s,
        &["sql", &base, "SELECT count(*), max(n), sum(n = rowid - 1) FROM t", "--json", "--read"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["rows"][0], serde_json::json!([50, 49, 50]), "only the first five batches: {out}");
}
