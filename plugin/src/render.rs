//! Output: aligned tables for people (coloured only when stdout is a terminal and NO_COLOR is unset), JSON or
//! YAML for scripts, times shown with how far away they are. Everything goes through
//! `entra_operator::out`, so that a reader closing the pipe (`| head`) ends the plugin quietly with exit 0.

use std::io::IsTerminal;

use entra_operator::out::{self, Flow};
use jiff::Timestamp;
use serde::Serialize;

use crate::cli::Format;

/// A table cell's colour, when colour is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    Red,
    Yellow,
    Green,
}

/// One cell: its text and the colour it takes on a terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub colour: Option<Colour>,
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell { text, colour: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::from(text.to_string())
    }
}

/// Whether to colour: stdout is a terminal and the user did not ask for none (https://no-color.org).
pub fn colour_on() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Columns padded to their widest cell (counted in characters: escape codes are added after padding), two
/// spaces apart, no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<Cell>], colour: bool) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.text.chars().count());
        }
    }
    let header: Vec<Cell> = headers.iter().map(|h| Cell::from(*h)).collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let last = i + 1 == row.len();
            let pad = if last {
                0
            } else {
                widths[i] - cell.text.chars().count() + 2
            };
            line.push_str(&paint(&cell.text, cell.colour.filter(|_| colour)));
            line.push_str(&" ".repeat(pad));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn paint(text: &str, colour: Option<Colour>) -> String {
    let code = match colour {
        None => return text.to_string(),
        Some(Colour::Red) => 31,
        Some(Colour::Yellow) => 33,
        Some(Colour::Green) => 32,
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A time as RFC 3339 to the second, with how far it is from `now`: "2026-03-01T00:00:00Z (in 30d)",
/// "... (2h ago)". Days past two days, else hours past two hours, else minutes, else seconds.
pub fn when(t: Timestamp, now: Timestamp) -> String {
    let seconds = t.as_second() - now.as_second();
    let span = seconds.unsigned_abs();
    let amount = match span {
        s if s >= 2 * 86_400 => format!("{}d", s / 86_400),
        s if s >= 2 * 3_600 => format!("{}h", s / 3_600),
        s if s >= 120 => format!("{}m", s / 60),
        s => format!("{s}s"),
    };
    let at = Timestamp::from_second(t.as_second()).unwrap_or(t);
    if seconds >= 0 {
        format!("{at} (in {amount})")
    } else {
        format!("{at} ({amount} ago)")
    }
}

/// An optional time for a table: "-" when there is none.
pub fn maybe_when(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or_else(|| "-".to_string(), |t| when(t, now))
}

/// Ready's colour: green when True, red when False, yellow otherwise (Unknown, or no condition yet).
pub fn ready_cell(ready: &str) -> Cell {
    let colour = match ready {
        "True" => Colour::Green,
        "False" => Colour::Red,
        _ => Colour::Yellow,
    };
    Cell {
        text: ready.to_string(),
        colour: Some(colour),
    }
}

/// Writes `value` as JSON or YAML, or the table text that `table` makes, to stdout.
pub fn emit<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = match format {
        Format::Table => table(),
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        Format::Yaml => serde_saphyr::to_string(value)?,
    };
    print(&text)
}

/// Writes `text` to stdout; when the reader has gone, ends the process quietly with exit 0 (as `cat` would).
pub fn print(text: &str) -> anyhow::Result<()> {
    if out::stdout(text)? == Flow::Closed {
        std::process::exit(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn times_say_how_far_away_they_are() {
        let now = t(0);
        let cases = [
            (0, "(in 0s)"),
            (119, "(in 119s)"),
            (120, "(in 2m)"),
            (7_199, "(in 119m)"),
            (7_200, "(in 2h)"),
            (2 * 86_400 - 1, "(in 47h)"),
            (30 * 86_400 + 5, "(in 30d)"),
            (-90, "(90s ago)"),
            (-3 * 86_400, "(3d ago)"),
        ];
        for (offset, want) in cases {
            let shown = when(t(offset), now);
            assert!(shown.ends_with(want), "{offset}: {shown}");
            assert!(
                shown.starts_with("2027-0") && !shown.contains('.'),
                "{offset}: {shown}"
            );
        }
        assert_eq!(maybe_when(None, now), "-");
    }

    #[test]
    fn tables_align_on_characters_and_colour_only_when_asked() {
        let rows = vec![
            vec![Cell::from("ServicePrincipal"), ready_cell("False")],
            vec![Cell::from("rd"), ready_cell("True")],
        ];
        let plain = table(&["KIND", "READY"], &rows, false);
        assert_eq!(
            plain,
            "KIND              READY\nServicePrincipal  False\nrd                True\n"
        );
        let coloured = table(&["KIND", "READY"], &rows, true);
        assert!(coloured.contains("\x1b[31mFalse\x1b[0m"), "{coloured:?}");
        assert!(
            coloured.contains("rd                \x1b[32mTrue"),
            "{coloured:?}"
        );
    }
}
