//! llama.cpp's CPU kernels as a portable specdec ships and selects them:
//! never AMX (its matmul crashes on Intel CPUs with AMX, and where it cannot
//! crash, on AMD, these tests still fail if it comes back), and a binary
//! that runs with the kernels of another CPU than the build machine's.

#![cfg(feature = "portable")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use specdec_backend::engine::runtime::{runtime_info, AMX_BUFFER_TYPE, CPU_MODULE_PREFIX};
use specdec_backend::models;

/// A string only code compiled with llama.cpp's AMX kernels carries: the
/// (C++-mangled) symbol of the matmul that crashes, which stripping keeps in
/// the dynamic symbol table. (Messages may name the function; they do not
/// carry its mangled name.)
const AMX_CODE_MARKER: &[u8] = b"_Z24ggml_backend_amx_mul_mat";

/// The module llama.cpp builds with AMX, which specdec does not ship.
const AMX_MODULE: &str = "libggml-cpu-sapphirerapids.so";

fn binary_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_specdec"))
        .parent()
        .expect("the binary lies in a directory")
        .to_path_buf()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The files a portable specdec consists of: the binary, llama.cpp's shared
/// libraries and the CPU kernel modules beside it.
fn shipped_files() -> Vec<PathBuf> {
    let dir = binary_dir();
    let mut files = vec![dir.join("specdec")];
    for entry in std::fs::read_dir(&dir).expect("the binary's directory is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("lib") && name.contains(".so") && !path.is_symlink() {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_selected_kernels_are_a_module_without_amx() {
    let info = runtime_info().expect("llama.cpp starts");
    assert!(
        info.cpu_module().starts_with(CPU_MODULE_PREFIX),
        "portable builds load a CPU module: {info:?}"
    );
    assert_ne!(info.cpu_module(), AMX_MODULE, "{info:?}");
    assert!(
        !info.cpu_buffer_types.iter().any(|b| b == AMX_BUFFER_TYPE),
        "the AMX weight buffer type is offered: {info:?}"
    );
    assert!(
        !info.cpu_features.iter().any(|f| f.starts_with("AMX")),
        "the selected kernels were compiled with AMX: {info:?}"
    );
    // Repacking stays on (the cheap small verification passes rest on it),
    // which also shows that the buffer types are read at all.
    assert!(
        info.cpu_buffer_types.iter().any(|b| b == "CPU_REPACK"),
        "{info:?}"
    );
    assert!(info.system_info.contains("CPU"), "{info:?}");
}

#[test]
fn no_shipped_file_holds_amx_kernels() {
    // The marker is found where AMX kernels are: in the module llama.cpp
    // built with them, which stays in its build directory.
    let built = Path::new(llama_cpp_sys_2::BACKENDS_DIR.expect("a portable build"));
    let amx_module = std::fs::read(built.join(AMX_MODULE)).expect("llama.cpp built the AMX module");
    assert!(
        contains(&amx_module, AMX_CODE_MARKER),
        "the marker no longer identifies AMX code: update AMX_CODE_MARKER"
    );
    let files = shipped_files();
    let modules = files
        .iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(CPU_MODULE_PREFIX)
        })
        .count();
    assert!(modules >= 10, "the CPU modules are shipped: {files:?}");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !contains(&bytes, AMX_CODE_MARKER),
            "{} holds llama.cpp's AMX kernels",
            file.display()
        );
    }
    assert!(!binary_dir().join(AMX_MODULE).exists());
}

/// Copy the binary and llama.cpp's shared libraries into `install`, with
/// `module` as the only CPU kernels (none when `None`).
fn install_copy(install: &Path, module: Option<&str>) {
    let _ = std::fs::remove_dir_all(install);
    std::fs::create_dir_all(install).unwrap();
    for entry in std::fs::read_dir(binary_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let library = name.starts_with("lib") && name.contains(".so");
        let wanted = name == "specdec"
            || (library && !name.starts_with(CPU_MODULE_PREFIX))
            || Some(name.as_str()) == module;
        if !wanted {
            continue;
        }
        if let Ok(link) = std::fs::read_link(&path) {
            std::os::unix::fs::symlink(link, install.join(&name)).unwrap();
        } else {
            std::fs::copy(&path, install.join(&name)).unwrap();
        }
    }
}

/// Run `specdec generate` from a copy of the binary and its libraries with
/// only `module` as CPU kernels, as on a CPU for which that is the best.
fn generate_with_only(module: &str) -> (serde_json::Value, String) {
    let install = std::env::temp_dir().join(format!(
        "specdec-{}-{}",
        module.trim_end_matches(".so"),
        std::process::id()
    ));
    install_copy(&install, Some(module));
    let output = Command::new(install.join("specdec"))
        .args([
            "generate",
            "--json",
            "--max-tokens",
            "6",
            "--prompt",
            "The capital of France is",
        ])
        .arg("--target")
        .arg(common::model(models::SMALL_OTHER_VOCAB_FILE))
        .env("SPECDEC_LOG", "info")
        .output()
        .expect("specdec runs");
    std::fs::remove_dir_all(&install).unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "specdec with {module} failed: {log}"
    );
    (
        serde_json::from_slice(&output.stdout).expect("one JSON object"),
        log,
    )
}

#[test]
fn the_binary_runs_with_the_kernels_of_older_cpus() {
    // The baseline x86-64 kernels (any x86-64 CPU) and AVX2's (most servers
    // of the last decade), each alone beside a copy of the binary.
    for module in ["libggml-cpu-x64.so", "libggml-cpu-haswell.so"] {
        let (json, log) = generate_with_only(module);
        assert!(
            log.lines()
                .any(|l| l.contains("llama.cpp runtime") && l.contains(module)),
            "{module} not selected: {log}"
        );
        assert_eq!(json["stats"]["completion_tokens"], 6, "{json}");
        assert!(
            !json["text"].as_str().unwrap_or_default().is_empty(),
            "{json}"
        );
    }
}

#[test]
fn without_any_module_the_error_says_what_is_missing() {
    let install = std::env::temp_dir().join(format!("specdec-nomodule-{}", std::process::id()));
    install_copy(&install.join("bin"), None);
    let output = Command::new(install.join("bin").join("specdec"))
        .args(["generate", "--max-tokens", "1", "--prompt", "Hi"])
        .arg("--target")
        .arg(common::model(models::SMALL_OTHER_VOCAB_FILE))
        .output()
        .expect("specdec runs");
    std::fs::remove_dir_all(&install).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a clean error exit: {stderr}"
    );
    assert!(
        stderr.contains("no llama.cpp CPU kernel module (libggml-cpu-*.so)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&install.join("bin").display().to_string()),
        "{stderr}"
    );
}
