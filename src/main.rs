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

fn main() -> Result<()> {
    keep_freed_memory();
    quiet_graphics_stack();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    cli::parse(&args)?.run()
}
