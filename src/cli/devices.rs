//! `wgspin devices`: the adapters wgpu sees and the one `--device auto` picks.

use anyhow::Result;
use clap::Args;

use wgspin::device;

/// List the GPU adapters wgpu can use (index for --device gpu:N, backend, type, f16 support)
/// and the kernel cache folder.
#[derive(Args, Debug)]
pub struct DevicesArgs {}

impl DevicesArgs {
    pub fn run(self) -> Result<()> {
        let adapters = device::list_adapters();
        let auto = device::auto_choice(&adapters);
        if adapters.is_empty() {
            println!(
                "No GPU adapter found. Commands run on the CPU backend (--device auto or cpu)."
            );
            println!(
                "On Linux, `apt-get install mesa-vulkan-drivers` gives a software Vulkan device."
            );
        } else {
            println!(
                "{:<7} {:<40} {:<8} {:<11} {:<4} driver",
                "device", "name", "backend", "type", "f16"
            );
            for a in &adapters {
                println!(
                    "gpu:{:<3} {:<40} {:<8} {:<11} {:<4} {}{}",
                    a.index,
                    a.name,
                    format!("{:?}", a.backend),
                    a.type_name(),
                    if a.shader_f16 { "yes" } else { "no" },
                    a.driver,
                    if auto == Some(a.index) {
                        "  <- auto"
                    } else {
                        ""
                    }
                );
            }
        }
        println!(
            "cpu     burn CPU backend (always available){}",
            if auto.is_none() { "  <- auto" } else { "" }
        );
        match wgspin::device::cache::cache_root() {
            Some(dir) => println!(
                "kernel cache: {} (autotune results per adapter and driver; delete to clear; \
                 {} relocates it)",
                dir.display(),
                wgspin::device::cache::CACHE_DIR_ENV
            ),
            None => {
                println!("kernel cache: none (no user cache directory; results kept in memory)")
            }
        }
        Ok(())
    }
}
