//! The `wgspin` binary: parses the command line (`cli/`) and runs the command; the work is in
//! the library.

use anyhow::Result;

mod cli;

/// Mesa's Vulkan device-select layer (an implicit layer on most Linux distributions) connects to
/// the Wayland/X display to reorder GPUs, and on a headless machine libwayland then prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` although nothing failed.
/// wgspin ranks adapters itself (`device::choose`), so the layer is switched off unless the
/// user set its switch or asked it for a GPU (`DRI_PRIME`).
fn quiet_graphics_stack() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("NODEVICE_SELECT").is_none() && std::env::var_os("DRI_PRIME").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn main() -> Result<()> {
    quiet_graphics_stack();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    cli::parse(&args)?.run()
}
