//! Print what a journal directory holds (the same as `understudy inspect DIR [--json]` once
//! the CLI is wired to `journal::inspect`): `cargo run -p journal --example inspect -- DIR [--json]`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: inspect DIR [--json]");
        return ExitCode::from(2);
    };
    let s = match journal::inspect::summarize(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("inspect: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.iter().any(|a| a == "--json") {
        match serde_json::to_string(&s) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("inspect: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{s}");
    }
    if s.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
