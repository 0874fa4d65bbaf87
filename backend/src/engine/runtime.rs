//! llama.cpp's runtime, set up once per process: the backend, the CPU kernel
//! module chosen for this CPU, and what was selected.
//!
//! Portable builds (feature `portable`, the default) compile llama.cpp's CPU
//! kernels once per x86-64 feature level, as modules shipped beside the
//! binary (`backend/build.rs` stages them); ggml scores each against the CPU
//! at hand and loads the best, as llama.cpp's own release builds do. So a
//! binary built on one machine runs at full speed on another.
//!
//! llama.cpp's AMX kernels are never used: `ggml_backend_amx_mul_mat`
//! crashes at the first decode on Intel CPUs with AMX (llama.cpp's open
//! report "segfault in ggml_backend_amx_mul_mat"). The build leaves the AMX
//! module out, and start-up refuses a CPU backend that offers the AMX buffer
//! type anyway (a module from elsewhere, a native build with AMX), naming
//! the module, rather than crash on the first request.

use std::ffi::{c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_sys_2 as sys;

use super::error::EngineError;

/// Name of the weight buffer type of llama.cpp's AMX kernels.
pub const AMX_BUFFER_TYPE: &str = "AMX";

/// File names of the CPU kernel modules of portable builds.
pub const CPU_MODULE_PREFIX: &str = "libggml-cpu-";

/// What llama.cpp selected on this machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeInfo {
    /// The file holding the CPU kernels in use: a module such as
    /// `…/libggml-cpu-icelake.so` in portable builds, else the binary itself.
    pub cpu_module_path: PathBuf,
    /// Instruction-set features the CPU kernels were compiled for, as
    /// llama.cpp names them (`AVX2`, `AVX512_VNNI`, `REPACK`, ...).
    pub cpu_features: Vec<String>,
    /// Weight buffer types the CPU backend offers besides plain memory
    /// (`CPU_REPACK`: weights repacked for its GEMM/GEMV kernels).
    pub cpu_buffer_types: Vec<String>,
    /// The devices llama.cpp can run on, as `name (type): description`.
    pub devices: Vec<String>,
    /// Whether one of them is a GPU (or an integrated GPU).
    pub has_gpu: bool,
    /// llama.cpp's system information line.
    pub system_info: String,
}

impl RuntimeInfo {
    /// The file name of [`RuntimeInfo::cpu_module_path`].
    pub fn cpu_module(&self) -> String {
        self.cpu_module_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

struct Runtime {
    backend: LlamaBackend,
    info: RuntimeInfo,
}

fn runtime() -> Result<&'static Runtime, EngineError> {
    static RUNTIME: OnceLock<Result<Runtime, EngineError>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            #[cfg(feature = "portable")]
            load_cpu_modules()?;
            let backend = LlamaBackend::init().map_err(|e| EngineError::Runtime(e.to_string()))?;
            let info = inspect()?;
            refuse_amx(&info)?;
            tracing::info!(
                cpu_module = %info.cpu_module_path.display(),
                cpu_features = %info.cpu_features.join(","),
                cpu_buffer_types = %info.cpu_buffer_types.join(","),
                devices = ?info.devices,
                "llama.cpp runtime"
            );
            tracing::info!(system_info = %info.system_info, "llama.cpp system info");
            Ok(Runtime { backend, info })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// llama.cpp's backend, initialised once per process; engines share it.
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    runtime().map(|r| &r.backend)
}

/// Initialise llama.cpp (once per process) and say what it selected.
pub fn runtime_info() -> Result<RuntimeInfo, EngineError> {
    runtime().map(|r| r.info.clone())
}

/// The directories searched for CPU kernel modules: the executable's own
/// and its parent's (test and example binaries live one level below).
#[cfg(feature = "portable")]
fn module_dirs() -> Vec<PathBuf> {
    let Ok(exe) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return Vec::new();
    };
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(Path::to_path_buf)
        .collect()
}

/// Whether `dir` holds at least one CPU kernel module.
#[cfg_attr(not(feature = "portable"), allow(dead_code))]
fn has_cpu_modules(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(CPU_MODULE_PREFIX) && n.ends_with(".so"))
        })
    })
}

/// Load the best CPU kernel module for this CPU from beside the executable.
#[cfg(feature = "portable")]
fn load_cpu_modules() -> Result<(), EngineError> {
    let dirs = module_dirs();
    let Some(dir) = dirs.iter().find(|d| has_cpu_modules(d)) else {
        return Err(EngineError::Runtime(format!(
            "no llama.cpp CPU kernel module ({CPU_MODULE_PREFIX}*.so) in {}: a portable \
             specdec needs the modules built with it in its own directory",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    };
    let path = dir
        .to_str()
        .ok_or_else(|| EngineError::Runtime(format!("{} is not UTF-8", dir.display())))?;
    let path = std::ffi::CString::new(path)
        .map_err(|_| EngineError::Runtime(format!("{} contains a NUL byte", dir.display())))?;
    // SAFETY: a valid NUL-terminated path; ggml copies what it keeps.
    unsafe { sys::ggml_backend_load_all_from_path(path.as_ptr()) };
    Ok(())
}

/// Refuse llama.cpp's AMX kernels (see the module documentation).
fn refuse_amx(info: &RuntimeInfo) -> Result<(), EngineError> {
    if info.cpu_buffer_types.iter().any(|b| b == AMX_BUFFER_TYPE) {
        return Err(EngineError::Runtime(format!(
            "the CPU kernels in {} offer llama.cpp's AMX weight buffers, whose matmul \
             (ggml_backend_amx_mul_mat) crashes on Intel CPUs with AMX; use the CPU modules \
             built with specdec, which leave AMX out",
            info.cpu_module_path.display()
        )));
    }
    Ok(())
}

/// A C string from llama.cpp, or empty.
fn text(ptr: *const std::ffi::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: llama.cpp returns NUL-terminated strings that live as long as
    // the backend registry (the process).
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// What llama.cpp's registry holds now.
fn inspect() -> Result<RuntimeInfo, EngineError> {
    // SAFETY: plain queries of ggml's backend registry, which lives for the
    // process; every pointer is checked before use and every array read up
    // to its NULL terminator, as ggml-backend.h documents.
    unsafe {
        let mut devices = Vec::new();
        let mut has_gpu = false;
        for i in 0..sys::ggml_backend_dev_count() {
            let dev = sys::ggml_backend_dev_get(i);
            if dev.is_null() {
                continue;
            }
            let kind = sys::ggml_backend_dev_type(dev);
            let kind_name = match kind {
                sys::GGML_BACKEND_DEVICE_TYPE_CPU => "CPU",
                sys::GGML_BACKEND_DEVICE_TYPE_GPU => "GPU",
                sys::GGML_BACKEND_DEVICE_TYPE_IGPU => "integrated GPU",
                sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => "accelerator",
                _ => "other",
            };
            has_gpu |= matches!(
                kind,
                sys::GGML_BACKEND_DEVICE_TYPE_GPU | sys::GGML_BACKEND_DEVICE_TYPE_IGPU
            );
            devices.push(format!(
                "{} ({kind_name}): {}",
                text(sys::ggml_backend_dev_name(dev)),
                text(sys::ggml_backend_dev_description(dev))
            ));
        }
        let cpu = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        if cpu.is_null() {
            return Err(EngineError::Runtime(
                "llama.cpp has no CPU backend: no CPU kernel module fits this CPU".into(),
            ));
        }
        let reg = sys::ggml_backend_dev_backend_reg(cpu);
        let get_features =
            sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_get_features".as_ptr());
        let mut cpu_features = Vec::new();
        if !get_features.is_null() {
            let get_features: sys::ggml_backend_get_features_t = std::mem::transmute(get_features);
            if let Some(get_features) = get_features {
                let mut feature = get_features(reg);
                while !feature.is_null() && !(*feature).name.is_null() {
                    cpu_features.push(text((*feature).name));
                    feature = feature.add(1);
                }
            }
        }
        let get_bufts = sys::ggml_backend_reg_get_proc_address(
            reg,
            c"ggml_backend_dev_get_extra_bufts".as_ptr(),
        );
        let mut cpu_buffer_types = Vec::new();
        if !get_bufts.is_null() {
            let get_bufts: sys::ggml_backend_dev_get_extra_bufts_t = std::mem::transmute(get_bufts);
            if let Some(get_bufts) = get_bufts {
                let mut buft = get_bufts(cpu);
                while !buft.is_null() && !(*buft).is_null() {
                    cpu_buffer_types.push(text(sys::ggml_backend_buft_name(*buft)));
                    buft = buft.add(1);
                }
            }
        }
        let cpu_module_path = file_defining(get_features);
        Ok(RuntimeInfo {
            cpu_module_path,
            cpu_features,
            cpu_buffer_types,
            devices,
            has_gpu,
            system_info: text(sys::llama_print_system_info()),
        })
    }
}

/// The file (shared object or executable) that defines `address`.
fn file_defining(address: *mut c_void) -> PathBuf {
    if address.is_null() {
        return PathBuf::new();
    }
    let mut found = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the loader's tables and fills `found`.
    let ok = unsafe { libc::dladdr(address, found.as_mut_ptr()) };
    if ok == 0 {
        return PathBuf::new();
    }
    // SAFETY: dladdr succeeded, so `found` is initialised.
    let found = unsafe { found.assume_init() };
    PathBuf::from(text(found.dli_fname))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(buffer_types: &[&str]) -> RuntimeInfo {
        RuntimeInfo {
            cpu_module_path: "/opt/specdec/libggml-cpu-x.so".into(),
            cpu_features: vec!["AVX2".into()],
            cpu_buffer_types: buffer_types.iter().map(|s| s.to_string()).collect(),
            devices: vec![],
            has_gpu: false,
            system_info: String::new(),
        }
    }

    #[test]
    fn the_module_is_named_by_its_file() {
        assert_eq!(info(&[]).cpu_module(), "libggml-cpu-x.so");
    }

    #[test]
    fn amx_buffers_are_refused_naming_the_module() {
        assert_eq!(refuse_amx(&info(&["CPU_REPACK"])), Ok(()));
        let Err(EngineError::Runtime(reason)) = refuse_amx(&info(&["AMX", "CPU_REPACK"])) else {
            panic!("AMX accepted");
        };
        assert!(reason.contains("/opt/specdec/libggml-cpu-x.so"), "{reason}");
        assert!(reason.contains("ggml_backend_amx_mul_mat"), "{reason}");
    }

    #[test]
    fn cpu_modules_are_found_by_name() {
        let dir = std::env::temp_dir().join(format!("specdec-modules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!has_cpu_modules(&dir));
        std::fs::write(dir.join("libggml-base.so"), b"").unwrap();
        assert!(!has_cpu_modules(&dir));
        std::fs::write(dir.join("libggml-cpu-haswell.so"), b"").unwrap();
        assert!(has_cpu_modules(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
