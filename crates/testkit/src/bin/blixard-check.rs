//! `blixard-check [--max-steps N] FILE`: checks a history saved as JSON lines (`-` reads
//! standard input) against the cluster model (KV keys and VMs by name).
//!
//! Exit status: 0 linearizable; 1 not linearizable (the report, with the window of each
//! violation, goes to standard output); 2 bad usage or bad input (the error names the line
//! and the field); 3 inconclusive (the step limit was reached in some partition).

use std::error::Error;
use std::fs::File;
use std::io::{self, BufReader};
use std::process::ExitCode;

use blixard_testkit::{check_with, ClusterModel, History, Limits};

const USAGE: &str = "usage: blixard-check [--max-steps N] FILE  (FILE `-` is standard input)";

struct Args {
    path: String,
    limits: Limits,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut path = None;
    let mut limits = Limits::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--max-steps" => {
                let value = args.next().ok_or("--max-steps needs a number")?;
                let steps =
                    value.parse::<u64>().map_err(|_| format!("--max-steps: `{value}` is not a whole number"))?;
                limits.max_steps = Some(steps);
            }
            "-h" | "--help" => return Err(String::new()),
            _ if arg.starts_with("--") => return Err(format!("unknown option `{arg}`")),
            _ if path.is_none() => path = Some(arg),
            _ => return Err(format!("unexpected argument `{arg}`: one FILE only")),
        }
    }
    let path = path.ok_or("FILE is missing")?;
    Ok(Args { path, limits })
}

/// The error and its causes, on one line.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) if problem.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("blixard-check: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let parsed = if args.path == "-" {
        History::<ClusterModel>::read_json_lines(io::stdin().lock())
    } else {
        match File::open(&args.path) {
            Ok(file) => History::read_json_lines(BufReader::new(file)),
            Err(error) => {
                eprintln!("blixard-check: cannot open {}: {error}", args.path);
                return ExitCode::from(2);
            }
        }
    };
    let history = match parsed {
        Ok(history) => history,
        Err(error) => {
            eprintln!("blixard-check: {}: {}", args.path, chain(&error));
            return ExitCode::from(2);
        }
    };
    let report = match check_with(&ClusterModel, &history, args.limits) {
        Ok(report) => report,
        Err(error) => {
            eprintln!(
                "blixard-check: {}: line {}: field `{}`: {}",
                args.path,
                error.index + 1,
                error.field,
                error.rule
            );
            return ExitCode::from(2);
        }
    };
    println!("{report}");
    if report.is_linearizable() {
        ExitCode::SUCCESS
    } else if !report.violations.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::from(3)
    }
}
