//! What a Hub download shows on stderr: one line per file with its size, and on a terminal a
//! percentage that updates in place.

use std::io::{IsTerminal, Write};

use wgspin::hf::hub::{HubEvent, HubId};

/// The reporter `wgspin::hf::hub::resolve_model` calls for `id`.
pub fn progress(id: &HubId) -> impl FnMut(HubEvent) + use<> {
    let id = id.clone();
    let terminal =
        std::io::stderr().is_terminal() && std::env::var("TERM").is_ok_and(|t| t != "dumb");
    move |event| match event {
        HubEvent::Download { file, bytes } => {
            eprintln!("{id}: downloading {file} ({})", size(bytes));
        }
        HubEvent::Progress { done, total } if terminal && total > 0 => {
            let pct = done * 100 / total;
            eprint!("\r  {pct:3}%");
            if done >= total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
        HubEvent::Progress { .. } => {}
        HubEvent::CacheFallback { reason } => {
            eprintln!("{id}: the Hub cannot be reached ({reason}); using the cached copy");
        }
    }
}

/// `bytes` in the unit that shows it best (B, KiB, MiB, GiB).
fn size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}
