//! Prints the rows of a benchmark run (the JSON-lines file
//! `COURIER_BENCH_OUT` named) as one table, and with `--compare OLD` how
//! each row moved since the run recorded in `OLD`.
//!
//! `cargo run -p courier-testkit --bin bench-table -- NEW.json [--compare OLD.json]`

use std::path::PathBuf;
use std::process::ExitCode;

use courier_testkit::bench::{compare, print_table, read_rows};

const USAGE: &str = "usage: bench-table NEW.json [--compare OLD.json]";

fn main() -> ExitCode {
    let mut new = None;
    let mut old = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--compare" {
            old = args.next().map(PathBuf::from);
            if old.is_none() {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        } else if new.is_none() {
            new = Some(PathBuf::from(arg));
        } else {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    let Some(new) = new else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rows = match read_rows(&new) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("bench-table: {}: {e}", new.display());
            return ExitCode::FAILURE;
        }
    };
    print_table(&rows);
    if let Some(old) = old {
        match read_rows(&old) {
            Ok(old_rows) => {
                println!("\nchange since {}", old.display());
                compare(&old_rows, &rows);
            }
            Err(e) => {
                eprintln!("bench-table: {}: {e}", old.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
