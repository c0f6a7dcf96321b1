//! Human output: aligned tables and statuses coloured when stdout is a terminal.

use std::io::IsTerminal;

use serde_json::Value;

pub fn colour_status(s: &str) -> String {
    if !std::io::stdout().is_terminal() {
        return s.to_owned();
    }
    let code = match s {
        "succeeded" | "done" | "active" => "32",
        "failed" | "errored" => "31",
        "retrying" | "sending" | "running" | "paused" => "33",
        "scheduled" | "pending" => "36",
        _ => "2",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

fn visible_len(s: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(visible_len(c));
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i].saturating_sub(visible_len(c)))))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// A JSON value as a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
