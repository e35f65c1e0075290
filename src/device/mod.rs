//! Compute devices: `auto | gpu | gpu:N | cpu`. GPUs are wgpu adapters (Vulkan, Metal, DX12; GL
//! when asked); `cpu` is burn's pure-Rust CPU backend, so every command also runs where no
//! adapter exists, and `auto` prefers it to a software adapter.

pub mod cache;
pub mod traffic;

use std::fmt;
use std::str::FromStr;

use std::sync::Mutex;

use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{Device, DeviceKind};

use crate::error::{Error, Result};
use cache::CacheStatus;

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// Best hardware adapter (discrete > integrated > virtual), else the CPU backend: software
    /// adapters (llvmpipe, SwiftShader, WARP) are slower than it.
    #[default]
    Auto,
    /// Best adapter, software ones included; an error when there is none.
    Gpu,
    /// Adapter N of `wgspin devices`.
    GpuIndex(usize),
    /// burn's CPU backend.
    Cpu,
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "gpu" => Ok(DeviceSpec::Gpu),
            "cpu" => Ok(DeviceSpec::Cpu),
            other => match other.strip_prefix("gpu:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::GpuIndex(n)),
                _ => Err(Error::Invalid(format!(
                    "invalid device {s:?}: use auto, gpu, gpu:N (N from `wgspin devices`) or cpu"
                ))),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Gpu => write!(f, "gpu"),
            DeviceSpec::GpuIndex(n) => write!(f, "gpu:{n}"),
            DeviceSpec::Cpu => write!(f, "cpu"),
        }
    }
}

/// One wgpu adapter as `wgspin devices` lists it.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// N of `gpu:N`: the position in [`list_adapters`].
    pub index: usize,
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub shader_f16: bool,
    pub driver: String,
    /// PCI vendor and device ids (0 where the API has none); part of the cache key.
    pub vendor: u32,
    pub device_id: u32,
    /// The largest buffer a kernel can bind, in bytes (min of the storage-binding and buffer
    /// limits the device is opened with).
    pub max_buffer: u64,
}

/// Name fragments of adapters that rasterise on the CPU: mesa's llvmpipe (Vulkan: lavapipe) and
/// softpipe, Google's SwiftShader, Microsoft's WARP. Some report a hardware-looking type (GL says
/// `Other`), so the name is checked as well as the type.
const SOFTWARE_ADAPTERS: &[&str] = &[
    "llvmpipe",
    "lavapipe",
    "softpipe",
    "swiftshader",
    "microsoft basic render driver",
];

impl AdapterSummary {
    pub fn type_name(&self) -> &'static str {
        if self.is_software() {
            return "software";
        }
        match self.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "software",
            wgpu::DeviceType::Other => "other",
        }
    }

    /// A GPU emulated on the CPU. burn's own CPU backend is faster than these for our work (one
    /// tiny-model SFT stage: 414 s on llvmpipe against 5 s on the CPU backend), so `auto` skips
    /// them.
    pub fn is_software(&self) -> bool {
        let name = self.name.to_ascii_lowercase();
        self.device_type == wgpu::DeviceType::Cpu
            || SOFTWARE_ADAPTERS.iter().any(|s| name.contains(s))
    }

    /// Lower is better: discrete > integrated > virtual > other > software.
    fn rank(&self) -> u8 {
        if self.is_software() {
            return 4;
        }
        match self.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        }
    }
}

/// The graphics APIs probed for adapters, in order. `WGPU_BACKEND` (wgpu's own variable, e.g.
/// `gl` or `vulkan,gl`) overrides it. OpenGL is left out by default: compute through GL is the
/// weakest path, and probing it on a headless Linux machine makes EGL print
/// `error: XDG_RUNTIME_DIR is invalid or not set` although nothing is wrong (the binary also
/// switches off Mesa's Vulkan device-select layer, which prints the same).
fn probed_apis() -> Vec<wgpu::Backend> {
    const ORDER: [wgpu::Backend; 4] = [
        wgpu::Backend::Vulkan,
        wgpu::Backend::Metal,
        wgpu::Backend::Dx12,
        wgpu::Backend::Gl,
    ];
    if let Some(asked) = wgpu::Backends::from_env() {
        return ORDER
            .into_iter()
            .filter(|&b| asked.contains(b.into()))
            .collect();
    }
    if cfg!(target_os = "macos") {
        vec![wgpu::Backend::Metal]
    } else if cfg!(target_os = "windows") {
        vec![wgpu::Backend::Vulkan, wgpu::Backend::Dx12]
    } else {
        vec![wgpu::Backend::Vulkan]
    }
}

fn enumerate(backend: wgpu::Backend) -> Vec<wgpu::Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backend.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    pollster::block_on(instance.enumerate_adapters(backend.into()))
}

/// Every adapter of the probed graphics APIs; `gpu:N` is the Nth. The same card can appear once
/// per API (Vulkan and DX12 on Windows): each entry runs on its own API.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let mut out = Vec::new();
    for api in probed_apis() {
        for a in enumerate(api) {
            let info = a.get_info();
            let limits = a.limits();
            out.push(AdapterSummary {
                index: out.len(),
                name: info.name,
                backend: info.backend,
                device_type: info.device_type,
                shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                vendor: info.vendor,
                device_id: info.device,
                max_buffer: limits
                    .max_buffer_size
                    .min(limits.max_storage_buffer_binding_size),
            });
        }
    }
    out
}

/// What a `--device` value resolves to over a list of adapters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// `gpu:N` of the list.
    Adapter(usize),
    /// The CPU backend; under `auto`, with the reason when adapters were passed over.
    Cpu { reason: Option<String> },
}

/// The adapter `auto` takes: the best hardware one. Software adapters never win (the CPU
/// backend beats them).
pub fn auto_choice(adapters: &[AdapterSummary]) -> Option<usize> {
    adapters
        .iter()
        .filter(|a| !a.is_software())
        .min_by_key(|a| (a.rank(), a.index))
        .map(|a| a.index)
}

/// Resolves `spec` over `adapters` without touching any device (unit-testable).
pub fn choose(spec: DeviceSpec, adapters: &[AdapterSummary]) -> Result<Choice> {
    match spec {
        DeviceSpec::Cpu => Ok(Choice::Cpu { reason: None }),
        DeviceSpec::GpuIndex(n) if n < adapters.len() => Ok(Choice::Adapter(n)),
        DeviceSpec::GpuIndex(n) if adapters.is_empty() => {
            Err(Error::Device(format!("gpu:{n}: {NO_ADAPTER_HINT}")))
        }
        DeviceSpec::GpuIndex(n) => Err(Error::Device(format!(
            "gpu:{n} does not exist; `wgspin devices` lists {} adapter(s), gpu:0..gpu:{}",
            adapters.len(),
            adapters.len() - 1
        ))),
        DeviceSpec::Gpu => adapters
            .iter()
            .min_by_key(|a| (a.rank(), a.index))
            .map(|a| Choice::Adapter(a.index))
            .ok_or_else(|| Error::Device(NO_ADAPTER_HINT.into())),
        DeviceSpec::Auto => Ok(match auto_choice(adapters) {
            Some(i) => Choice::Adapter(i),
            None => Choice::Cpu {
                reason: Some(match adapters.first() {
                    Some(sw) => format!(
                        "only a software adapter ({}) found; using the CPU backend, \
                         pass --device gpu to use it anyway",
                        sw.name
                    ),
                    None => "no GPU adapter found; using the CPU backend".into(),
                }),
            },
        }),
    }
}

/// A resolved compute device.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    pub device: Device,
    /// Human-readable description for logs.
    pub description: String,
    pub is_gpu: bool,
    /// A software adapter (llvmpipe, SwiftShader, WARP): a GPU API on the CPU's cores.
    pub is_software: bool,
    /// Why `auto` settled on the CPU backend, when it passed adapters over.
    pub note: Option<String>,
    /// Where cubecl's autotune cache lives for this adapter (GPU only).
    pub cache: Option<CacheStatus>,
}

const NO_ADAPTER_HINT: &str = "no GPU adapter found (wgpu sees no Vulkan, Metal or DX12 device; \
     set WGPU_BACKEND=gl to try OpenGL). Run with `--device cpu`, or install a GPU driver; on \
     Linux, `apt-get install mesa-vulkan-drivers` gives a software Vulkan device (lavapipe).";

/// burn's selector for an adapter: its index among adapters of the same type on the same API.
fn device_kind(adapters: &[AdapterSummary], chosen: &AdapterSummary) -> DeviceKind {
    let same_type = adapters[..chosen.index]
        .iter()
        .filter(|a| a.device_type == chosen.device_type && a.backend == chosen.backend)
        .count();
    match chosen.device_type {
        wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(same_type),
        wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(same_type),
        wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(same_type),
        wgpu::DeviceType::Cpu => DeviceKind::Cpu,
        wgpu::DeviceType::Other => DeviceKind::DefaultDevice,
    }
}

fn pinned_api(api: wgpu::Backend) -> WgpuBackend {
    match api {
        wgpu::Backend::Vulkan => WgpuBackend::Vulkan,
        wgpu::Backend::Metal => WgpuBackend::Metal,
        wgpu::Backend::Dx12 => WgpuBackend::Dx12,
        wgpu::Backend::Gl => WgpuBackend::Gl,
        wgpu::Backend::BrowserWebGpu => WgpuBackend::WebGpu,
        _ => WgpuBackend::Auto,
    }
}

/// burn devices made in this process, by (API, kind), with the adapter they run on: burn refuses
/// to initialise one twice.
type Made = ((wgpu::Backend, DeviceKind), Device, AdapterSummary);
static DEVICES: Mutex<Vec<Made>> = Mutex::new(Vec::new());

/// Logits the CPU backend computes at once (32 MiB of f32; measured to keep peak RSS flat).
const CPU_LOGITS: usize = 1 << 23;
/// The most logits a GPU computes at once (256 MiB of f32 per buffer: the forward's logits and
/// the backward's gradient of them are alive together).
const GPU_MAX_LOGITS: usize = 1 << 26;

/// How many logits (positions × vocab, f32) the lm_head computes at once on `device` (with or
/// without autodiff): an eighth of its largest bindable buffer, at most [`GPU_MAX_LOGITS`], on a
/// GPU this process opened; [`CPU_LOGITS`] on the CPU backend. Fewer, larger chunks mean fewer
/// launches; the margin leaves room for the other buffers of a step.
pub fn logits_budget(device: &Device) -> usize {
    match adapter_of(device) {
        Some(a) => ((a.max_buffer / 8).min(GPU_MAX_LOGITS as u64) as usize).max(CPU_LOGITS / 8),
        None => CPU_LOGITS,
    }
}

/// The adapter a GPU device this process opened runs on (autodiff or not); `None` on the CPU.
fn adapter_of(device: &Device) -> Option<AdapterSummary> {
    let made = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    made.iter()
        .find(|(_, d, _)| d == device)
        .map(|(_, _, a)| a.clone())
}

/// Whether `device` is a GPU whose WGSL has `shader-f16`; `None` on the CPU backend (which runs
/// f16 in software).
pub fn runs_f16(device: &Device) -> Option<bool> {
    adapter_of(device).map(|a| a.shader_f16)
}

/// The burn device of `chosen`, pinned to its graphics API so that burn's runtime does not
/// probe the others (see [`probed_apis`]).
fn wgpu_device(adapters: &[AdapterSummary], chosen: &AdapterSummary) -> Result<Device> {
    let key = (chosen.backend, device_kind(adapters, chosen));
    let mut made = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, d, _)) = made.iter().find(|(k, _, _)| *k == key) {
        return Ok(d.clone());
    }
    let device = Device::wgpu_options()
        .device_kind(key.1.clone())
        .graphics_api(pinned_api(chosen.backend))
        .init()
        .map_err(|e| {
            Error::Device(format!(
                "gpu:{} {} ({:?}): could not start the device: {e}",
                chosen.index, chosen.name, chosen.backend
            ))
        })?;
    made.push((key, device.clone(), chosen.clone()));
    Ok(device)
}

/// The CPU backend device.
pub fn cpu_device() -> ComputeDevice {
    ComputeDevice {
        device: Device::flex(),
        description: "cpu (burn flex backend)".into(),
        is_gpu: false,
        is_software: false,
        note: None,
        cache: None,
    }
}

/// Resolves a `--device` value to a burn device.
pub fn select(spec: DeviceSpec) -> Result<ComputeDevice> {
    if spec == DeviceSpec::Cpu {
        return Ok(cpu_device());
    }
    let adapters = list_adapters();
    let chosen = match choose(spec, &adapters)? {
        Choice::Adapter(i) => &adapters[i],
        Choice::Cpu { reason } => {
            return Ok(ComputeDevice {
                note: reason,
                ..cpu_device()
            });
        }
    };
    // Before the device exists: cubecl reads where to cache once, at its first use.
    let cache = cache::configure(chosen);
    Ok(ComputeDevice {
        device: wgpu_device(&adapters, chosen)?,
        description: format!(
            "gpu:{} {} ({:?}, {})",
            chosen.index,
            chosen.name,
            chosen.backend,
            chosen.type_name()
        ),
        is_gpu: true,
        is_software: chosen.is_software(),
        note: None,
        cache: Some(cache),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("GPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Gpu);
        assert_eq!(
            "gpu:2".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::GpuIndex(2)
        );
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        let e = "cuda".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("gpu:N"), "{e}");
    }

    fn adapter(index: usize, name: &str, t: wgpu::DeviceType) -> AdapterSummary {
        AdapterSummary {
            index,
            name: name.into(),
            backend: wgpu::Backend::Vulkan,
            device_type: t,
            shader_f16: true,
            driver: String::new(),
            vendor: 0,
            device_id: 0,
            max_buffer: 128 << 20,
        }
    }

    #[test]
    fn software_adapters_lose_to_the_cpu_under_auto() {
        use wgpu::DeviceType::*;
        let lavapipe = adapter(0, "llvmpipe (LLVM 15.0.6, 256 bits)", Cpu);
        // GL reports llvmpipe as `Other`: the name decides.
        let gl_llvmpipe = adapter(1, "llvmpipe (LLVM 15.0.6, 256 bits)", Other);
        let swiftshader = adapter(2, "SwiftShader Device (Subzero)", Other);
        let warp = adapter(3, "Microsoft Basic Render Driver", Cpu);
        let soft = [lavapipe, gl_llvmpipe, swiftshader, warp];
        for a in &soft {
            assert!(a.is_software(), "{}", a.name);
            assert_eq!(a.type_name(), "software");
        }
        match choose(DeviceSpec::Auto, &soft).unwrap() {
            Choice::Cpu { reason: Some(r) } => {
                assert!(r.contains("only a software adapter (llvmpipe"), "{r}");
                assert!(r.contains("--device gpu"), "{r}");
            }
            other => panic!("auto chose {other:?} over software adapters"),
        }
        assert_eq!(auto_choice(&soft), None);
        // `gpu` still takes a software adapter, and gpu:N any listed one.
        assert_eq!(choose(DeviceSpec::Gpu, &soft).unwrap(), Choice::Adapter(0));
        assert_eq!(
            choose(DeviceSpec::GpuIndex(2), &soft).unwrap(),
            Choice::Adapter(2)
        );
        assert!(choose(DeviceSpec::GpuIndex(4), &soft).is_err());
        assert_eq!(
            choose(DeviceSpec::Auto, &[]).unwrap(),
            Choice::Cpu {
                reason: Some("no GPU adapter found; using the CPU backend".into())
            }
        );
        assert!(choose(DeviceSpec::Gpu, &[]).is_err());
        assert_eq!(
            choose(DeviceSpec::Cpu, &soft).unwrap(),
            Choice::Cpu { reason: None }
        );
    }

    #[test]
    fn auto_ranks_discrete_over_integrated_over_software() {
        use wgpu::DeviceType::*;
        let list = [
            adapter(0, "llvmpipe (LLVM 15.0.6, 256 bits)", Cpu),
            adapter(1, "Intel(R) UHD Graphics 620", IntegratedGpu),
            adapter(2, "NVIDIA GeForce RTX 3060", DiscreteGpu),
            adapter(3, "NVIDIA GeForce RTX 4090", DiscreteGpu),
        ];
        assert_eq!(choose(DeviceSpec::Auto, &list).unwrap(), Choice::Adapter(2));
        assert_eq!(choose(DeviceSpec::Gpu, &list).unwrap(), Choice::Adapter(2));
        assert_eq!(
            choose(DeviceSpec::Auto, &list[..2]).unwrap(),
            Choice::Adapter(1)
        );
        // The second discrete card of the list is burn's DiscreteGpu(1).
        assert_eq!(device_kind(&list, &list[3]), DeviceKind::DiscreteGpu(1));
    }
}
