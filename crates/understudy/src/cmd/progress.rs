//! Progress bars for long dumps and restores: shown only when stderr is a terminal.

use std::io::IsTerminal;

/// A byte-counting bar with rate, or `None` when stderr is not a terminal.
pub fn bar(what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new_spinner();
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bytes} ({bytes_per_sec}) {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    b.set_message(what.to_string());
    Some(b)
}
