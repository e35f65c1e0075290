//! Every kernel in one list, [`KERNELS`]: what `wgspin bench kernels` runs (each entry's bench
//! function, in this order) and what the shader tests below check (every `shaders/*.wgsl` is some
//! entry's, and every template variant of every entry's shaders parses and validates with naga,
//! the WGSL front end wgpu compiles them with). Adding a kernel: its shader in `shaders/` (and a
//! `shader!` constant beside its launch), its launch/twin file here in `src/kernels`, its test
//! against the twin in `tests/kernels_*.rs`, and one line below.

use burn::tensor::Device;

use super::bench::{self, BenchFn, BenchRow, BenchSizes};
use super::common::{Shader, Variant};
use super::{
    attention, flash_wgsl, logprobs, norm, norm_train, optim_step, pack_flat, rope_cache,
    rope_train, rows_matmul, sample,
};
use crate::error::Result;

/// Every registered kernel that has a benchmark against its twin on `device`, in the registry's
/// order: `wgspin bench kernels`.
pub fn bench_kernels(device: &Device, sizes: BenchSizes) -> Result<Vec<BenchRow>> {
    let mut rows = vec![];
    for bench in KERNELS.iter().filter_map(|k| k.bench) {
        rows.extend(bench(device, &sizes)?);
    }
    Ok(rows)
}

/// One kernel: an op with a hand-written implementation (WGSL, Rust loops for the CPU backend, or
/// both) next to its burn-ops twin.
#[derive(Debug)]
pub struct KernelInfo {
    /// The op's name (its public function in `src/kernels/<module>.rs`).
    pub name: &'static str,
    /// Its launch/twin file in `src/kernels`.
    pub module: &'static str,
    /// The file in `tests/` that holds it to its twin and to an independent reference.
    pub test: &'static str,
    /// Its WGSL shaders (none: Rust loops for the CPU backend, the twin elsewhere).
    pub shaders: &'static [&'static Shader],
    /// Every template variant of its shaders, completed: what the validation test compiles.
    pub variants: fn() -> Vec<Variant>,
    /// Its rows of `wgspin bench kernels`, where it has a benchmark.
    pub bench: Option<BenchFn>,
}

/// A kernel with WGSL shaders: `(name, module, test)`, its shaders and their variants, its bench.
const fn wgsl(
    (name, module, test): (&'static str, &'static str, &'static str),
    shaders: &'static [&'static Shader],
    variants: fn() -> Vec<Variant>,
    bench: Option<BenchFn>,
) -> KernelInfo {
    KernelInfo {
        name,
        module,
        test,
        shaders,
        variants,
        bench,
    }
}

/// A kernel of Rust loops for the CPU backend alone (`cpu_train.rs`), burn's fusion running its
/// twin on wgpu: `(name, module, test)`.
const fn cpu_only((name, module, test): (&'static str, &'static str, &'static str)) -> KernelInfo {
    KernelInfo {
        name,
        module,
        test,
        shaders: &[],
        variants: Vec::new,
        bench: None,
    }
}

/// The kernels, in the order `wgspin bench kernels` reports them.
#[rustfmt::skip]
pub const KERNELS: &[KernelInfo] = &[
    wgsl(("token_logprobs", "logprobs.rs", "kernels_logprobs.rs"),
        &[&logprobs::FWD_SHADER, &logprobs::BWD_SHADER], logprobs::variants, Some(bench::token_logprobs)),
    wgsl(("sample", "sample.rs", "kernels_sample.rs"),
        &[&sample::SHADER], sample::variants, Some(bench::sample)),
    wgsl(("decode_attention", "attention.rs", "kernels_attention.rs"),
        &[&attention::SHADER], attention::variants, Some(bench::decode_attention)),
    wgsl(("rows_matmul", "rows_matmul.rs", "kernels_decode.rs"),
        &[&rows_matmul::SHADER], rows_matmul::variants, Some(bench::rows_matmul)),
    wgsl(("rms_norm", "norm.rs", "kernels_decode.rs"),
        &[&norm::SHADER], norm::variants, None),
    wgsl(("rope_cache_write", "rope_cache.rs", "kernels_decode.rs"),
        &[&rope_cache::SHADER], rope_cache::variants, None),
    wgsl(("flash_forward_wgsl", "flash_wgsl.rs", "kernels_flash_wgsl.rs"),
        &[&flash_wgsl::FWD_SHADER, &flash_wgsl::BWD_DQ_SHADER, &flash_wgsl::BWD_DKDV_SHADER],
        flash_wgsl::variants, None),
    cpu_only(("flash_attention", "flash_attention.rs", "kernels_flash.rs")),
    wgsl(("rms_norm_train", "norm_train.rs", "kernels_norm_rope.rs"),
        &[&norm_train::FWD_SHADER, &norm_train::BWD_SHADER, &norm_train::DW_SHADER], norm_train::variants, Some(bench::rms_norm_train)),
    wgsl(("rope_train", "rope_train.rs", "kernels_norm_rope.rs"),
        &[&rope_train::SHADER], rope_train::variants, Some(bench::rope_train)),
    cpu_only(("masked_softmax", "softmax.rs", "kernels_train.rs")),
    cpu_only(("swiglu", "swiglu.rs", "kernels_train.rs")),
    wgsl(("rmsprop_step", "optim_step.rs", "kernels_train.rs"),
        &[&optim_step::SHADER], optim_step::variants, None),
    wgsl(("adamw_step", "optim_step.rs", "kernels_train.rs"),
        &[&optim_step::SHADER], optim_step::variants, None),
    wgsl(("step_probe", "optim_step.rs", "kernels_train.rs"),
        &[&optim_step::PROBE_SHADER], optim_step::probe_variants, None),
    wgsl(("pack_flat", "pack_flat.rs", "kernels_pack.rs"),
        &[&pack_flat::SHADER], pack_flat::variants, None),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::kernels::common::PRELUDE;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// `shaders/*.wgsl` but the prelude, by file name.
    fn shader_files() -> BTreeSet<String> {
        std::fs::read_dir(root().join("shaders"))
            .expect("shaders/")
            .map(|e| {
                e.expect("shaders/ entry")
                    .file_name()
                    .into_string()
                    .expect("a UTF-8 name")
            })
            .filter(|f| f.ends_with(".wgsl") && f != "prelude.wgsl")
            .collect()
    }

    fn validate(source: &str, f16: bool) -> Result<(), String> {
        use naga::valid::{Capabilities, ValidationFlags, Validator};
        let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
        let caps = match f16 {
            true => Capabilities::SHADER_FLOAT16,
            false => Capabilities::empty(),
        };
        Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .map(drop)
            .map_err(|e| e.emit_to_string(source))
    }

    #[test]
    fn every_shader_is_registered_and_every_registered_shader_exists() {
        let registered: BTreeSet<String> = KERNELS
            .iter()
            .flat_map(|k| k.shaders)
            .map(|s| s.file.to_string())
            .collect();
        assert_eq!(
            shader_files(),
            registered,
            "shaders/*.wgsl vs the registry's shaders"
        );
        for s in KERNELS.iter().flat_map(|k| k.shaders) {
            let text = std::fs::read_to_string(root().join("shaders").join(s.file)).unwrap();
            assert_eq!(
                s.text, text,
                "{}: the shader! constant holds another file",
                s.file
            );
        }
    }

    #[test]
    fn every_shader_has_variants_and_every_variant_a_shader() {
        for k in KERNELS {
            let shaders: BTreeSet<&str> = k.shaders.iter().map(|s| s.file).collect();
            let variants: BTreeSet<&str> = (k.variants)().iter().map(|v| v.file).collect();
            assert_eq!(shaders, variants, "{}: shaders vs variants", k.name);
        }
    }

    #[test]
    fn every_variant_of_every_shader_validates() {
        for k in KERNELS {
            for v in (k.variants)() {
                let what = format!("{} ({}, f16 {})", k.name, v.file, v.f16);
                // The source is the file's text with values filled in, after the prelude and
                // the f16 directive where the kernel puts them.
                let text = std::fs::read_to_string(root().join("shaders").join(v.file))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let first = text.lines().next().unwrap_or_default();
                assert!(v.source.contains(first), "{what}: not the file's text");
                assert!(
                    !v.source.contains("{{"),
                    "{what}: a template value left unfilled"
                );
                if let Err(e) = validate(&v.source, v.f16) {
                    panic!("{what} does not validate:\n{e}");
                }
            }
        }
    }

    #[test]
    fn the_prelude_validates_alone() {
        // With the one constant it asks its user for.
        validate(&format!("const WG: u32 = 64u;\n{PRELUDE}"), false).unwrap();
    }

    #[test]
    fn every_kernel_has_its_module_and_test() {
        let names: BTreeSet<&str> = KERNELS.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), KERNELS.len(), "a kernel listed twice");
        for k in KERNELS {
            let module = std::fs::read_to_string(root().join("src/kernels").join(k.module))
                .unwrap_or_else(|e| panic!("{}: src/kernels/{}: {e}", k.name, k.module));
            assert!(
                module.contains(&format!("pub fn {}", k.name)),
                "{}: not in {}",
                k.name,
                k.module
            );
            let test = std::fs::read_to_string(root().join("tests").join(k.test))
                .unwrap_or_else(|e| panic!("{}: tests/{}: {e}", k.name, k.test));
            assert!(test.contains(k.name), "{}: not in tests/{}", k.name, k.test);
        }
    }
}
