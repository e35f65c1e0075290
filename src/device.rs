//! Compute devices: `auto | gpu | gpu:N | cpu`. GPUs are wgpu adapters (Vulkan, Metal, DX12, GL);
//! `cpu` is burn's pure-Rust CPU backend, so every command also runs where no adapter exists.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, DeviceKind};

use crate::error::{Error, Result};

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// Best adapter (discrete > integrated > virtual > software), else the CPU backend.
    #[default]
    Auto,
    /// Best adapter; an error when there is none.
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
    pub index: usize,
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub shader_f16: bool,
    pub driver: String,
}

impl AdapterSummary {
    pub fn type_name(&self) -> &'static str {
        match self.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "software",
            wgpu::DeviceType::Other => "other",
        }
    }

    fn rank(&self) -> u8 {
        match self.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        }
    }
}

/// The graphics API burn's runtime settles on: the first of this chain with an adapter.
fn api_chain() -> &'static [wgpu::Backend] {
    if cfg!(target_os = "macos") {
        &[wgpu::Backend::Metal]
    } else {
        &[
            wgpu::Backend::Vulkan,
            wgpu::Backend::Dx12,
            wgpu::Backend::Gl,
        ]
    }
}

fn enumerate(backend: wgpu::Backend) -> Vec<wgpu::Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backend.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    pollster::block_on(instance.enumerate_adapters(backend.into()))
}

/// Adapters of the graphics API burn will run on, in the order burn indexes them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    for &api in api_chain() {
        let adapters = enumerate(api);
        if !adapters.is_empty() {
            return adapters
                .iter()
                .enumerate()
                .map(|(index, a)| {
                    let info = a.get_info();
                    AdapterSummary {
                        index,
                        name: info.name,
                        backend: info.backend,
                        device_type: info.device_type,
                        shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
                        driver: format!("{} {}", info.driver, info.driver_info)
                            .trim()
                            .to_string(),
                    }
                })
                .collect();
        }
    }
    vec![]
}

/// A resolved compute device.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    pub device: Device,
    /// Human-readable description for logs.
    pub description: String,
    pub is_gpu: bool,
}

const NO_ADAPTER_HINT: &str = "no GPU adapter found (wgpu sees no Vulkan, Metal, DX12 or GL device). \
     Run with `--device cpu`, or install a GPU driver; on Linux, `apt-get install mesa-vulkan-drivers` \
     gives a software Vulkan device (lavapipe).";

/// burn's selector for an adapter: its index among adapters of the same type.
fn device_kind(adapters: &[AdapterSummary], chosen: &AdapterSummary) -> DeviceKind {
    let same_type = adapters[..chosen.index]
        .iter()
        .filter(|a| a.device_type == chosen.device_type)
        .count();
    match chosen.device_type {
        wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(same_type),
        wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(same_type),
        wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(same_type),
        wgpu::DeviceType::Cpu => DeviceKind::Cpu,
        wgpu::DeviceType::Other => DeviceKind::DefaultDevice,
    }
}

/// The CPU backend device.
pub fn cpu_device() -> ComputeDevice {
    ComputeDevice {
        device: Device::flex(),
        description: "cpu (burn flex backend)".into(),
        is_gpu: false,
    }
}

/// Resolves a `--device` value to a burn device.
pub fn select(spec: DeviceSpec) -> Result<ComputeDevice> {
    if spec == DeviceSpec::Cpu {
        return Ok(cpu_device());
    }
    let adapters = list_adapters();
    let chosen = match spec {
        DeviceSpec::GpuIndex(n) => adapters.get(n).cloned().ok_or_else(|| {
            if adapters.is_empty() {
                Error::Device(NO_ADAPTER_HINT.into())
            } else {
                Error::Device(format!(
                    "gpu:{n} does not exist; `wgspin devices` lists {} adapter(s), gpu:0..gpu:{}",
                    adapters.len(),
                    adapters.len() - 1
                ))
            }
        })?,
        _ => match adapters.iter().min_by_key(|a| (a.rank(), a.index)) {
            Some(a) => a.clone(),
            None if spec == DeviceSpec::Auto => return Ok(cpu_device()),
            None => return Err(Error::Device(NO_ADAPTER_HINT.into())),
        },
    };
    let kind = device_kind(&adapters, &chosen);
    Ok(ComputeDevice {
        device: Device::wgpu(kind),
        description: format!(
            "gpu:{} {} ({:?}, {})",
            chosen.index,
            chosen.name,
            chosen.backend,
            chosen.type_name()
        ),
        is_gpu: true,
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
}
