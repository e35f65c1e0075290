//! Where cubecl keeps what it learns about an adapter between processes: autotune decisions
//! (which matmul/reduce variant is fastest for each shape) and throughput probes.
//!
//! Without this every GPU process re-benchmarks every kernel variant before its first token
//! (minutes on a software adapter). cubecl's own default puts the cache under the nearest
//! `target/`, i.e. per checkout; a user's cache belongs in their cache directory instead, one
//! database per adapter *and* driver version, because a decision measured on one driver is not
//! evidence on another.
//!
//! Layout: `<cache root>/<adapter key>.db`, the cache root being `$WGSPIN_CACHE_DIR`, or else the
//! user cache directory (`$XDG_CACHE_HOME` or `~/.cache` on Linux and macOS, `%LOCALAPPDATA%` on
//! Windows) joined with `wgspin/cubecl`. Deleting the folder clears it; it is rebuilt on the
//! next run.
//!
//! A corrupt or unreadable database is not an error here: cubecl then keeps its results in
//! memory for the process and the run is only as slow as a cold one.

use std::path::PathBuf;

use burn::cubecl::config::cache::CacheConfig;
use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

use crate::device::AdapterSummary;

/// Environment variable that relocates the cache (e.g. to a shared or faster disk).
pub const CACHE_DIR_ENV: &str = "WGSPIN_CACHE_DIR";

/// What `configure` settled on, for the one-line report of the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    /// The database file of this adapter.
    pub path: PathBuf,
    /// Whether the file existed before this process: warm start (reused) or cold (created).
    pub reused: bool,
}

/// The folder holding one database per adapter, or `None` when the platform names no cache
/// directory (no `HOME`): cubecl then works in memory only.
pub fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    use etcetera::BaseStrategy;
    let base = etcetera::choose_base_strategy().ok()?;
    Some(base.cache_dir().join("wgspin").join("cubecl"))
}

/// A file-name-safe key naming the adapter and its driver version: a readable prefix plus a
/// hash of everything that identifies them, so two drivers never share a database.
pub fn adapter_key(a: &AdapterSummary) -> String {
    let readable: String = format!("{:?}-{}", a.backend, a.name)
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut readable = readable
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    readable.truncate(40);
    let identity = format!(
        "{:?}\u{1f}{}\u{1f}{:#x}\u{1f}{:#x}\u{1f}{}",
        a.backend, a.name, a.vendor, a.device_id, a.driver
    );
    format!("{readable}-{:016x}", fnv1a(identity.as_bytes()))
}

/// FNV-1a: stable across Rust releases and platforms (std's hasher is not promised to be).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Points cubecl's persistent cache at this adapter's database. Must run before the first
/// tensor touches any wgpu device (cubecl reads its configuration once per process); later
/// calls keep the first configuration and report where it put the cache.
pub fn configure(adapter: &AdapterSummary) -> CacheStatus {
    let root = cache_root();
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    // A cubecl.toml that chose its own location is the user's decision; only cubecl's default
    // (the nearest target/ folder) is replaced.
    let ours = matches!(config.environment.path, CacheConfig::Target) && root.is_some();
    if let (true, Some(root)) = (ours, root) {
        config.environment.path = CacheConfig::Directory(root);
        config.environment.name = adapter_key(adapter);
    }
    // Keeps an earlier configuration of this process; the path below reports whichever is live.
    CubeClRuntimeConfig::try_set(config);
    // Nothing has opened the database yet (cubecl opens it lazily, at a device's first use), so
    // its existence now tells a warm start from a cold one.
    let path = burn::cubecl::environment::path();
    CacheStatus {
        reused: path.exists(),
        path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(name: &str, driver: &str) -> AdapterSummary {
        AdapterSummary {
            index: 0,
            name: name.into(),
            backend: wgpu::Backend::Vulkan,
            device_type: wgpu::DeviceType::Cpu,
            shader_f16: true,
            driver: driver.into(),
            vendor: 0x10005,
            device_id: 0,
            max_buffer: 128 << 20,
        }
    }

    #[test]
    fn key_is_file_safe_and_changes_with_the_driver() {
        let a = adapter("llvmpipe (LLVM 15.0.6, 256 bits)", "llvmpipe Mesa 22.3.6");
        let b = adapter("llvmpipe (LLVM 15.0.6, 256 bits)", "llvmpipe Mesa 23.0.0");
        let ka = adapter_key(&a);
        assert!(
            ka.starts_with("vulkan-llvmpipe-llvm-15-0-6-256-bits-"),
            "{ka}"
        );
        assert!(
            ka.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{ka}"
        );
        assert_ne!(
            ka,
            adapter_key(&b),
            "driver update must not reuse the cache"
        );
        assert_eq!(ka, adapter_key(&a.clone()));
        let long = adapter(&"x".repeat(500), "d");
        assert!(adapter_key(&long).len() <= 40 + 17);
    }
}
