//! The `wgspin` binary: parses the command line (`cli/`) and runs the command; the work is in
//! the library.

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

/// A CPU training step allocates and frees its activations (tens of MiB each) every step. glibc
/// hands blocks over 32 MiB back to the OS at each free and trims the heap's top, so every step
/// page-faults that memory in again (measured: 11% of a SmolLM2 step at 2 x 512 on the CPU
/// backend, for 4% more peak RSS). Freed memory stays in the process instead. Other platforms'
/// allocators are left as they are.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in `main`, before any allocation from another thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// An error and its causes as anyhow prints them, less each cause whose text the line above it
/// already holds (the library's errors carry their cause in their own message: "x.json: Read-only
/// file system" would otherwise be followed by "Read-only file system").
fn error_report(e: &anyhow::Error) -> String {
    let mut lines: Vec<String> = vec![];
    for cause in e.chain() {
        let text = cause.to_string();
        if lines.last().is_none_or(|above| !above.contains(&text)) {
            lines.push(text);
        }
    }
    let mut out = format!("Error: {}", lines[0]);
    match &lines[1..] {
        [] => {}
        [one] => out.push_str(&format!("\n\nCaused by:\n    {one}")),
        many => {
            out.push_str("\n\nCaused by:");
            for (i, c) in many.iter().enumerate() {
                out.push_str(&format!("\n    {i}: {c}"));
            }
        }
    }
    out
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    quiet_graphics_stack();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match cli::parse(&args).and_then(|c| c.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
