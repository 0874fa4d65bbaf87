//! Portable builds (feature `portable`): put llama.cpp's shared libraries and
//! CPU kernel modules beside the binaries, where they are found at run time
//! (the binaries' rpath is `$ORIGIN:$ORIGIN/..`, see `.cargo/config.toml`;
//! `engine/runtime.rs` loads the modules from the same directories).
//!
//! llama.cpp builds one CPU module per x86-64 feature level and ggml loads
//! the best for the CPU at hand. The Sapphire Rapids module is left out: it
//! is the only one built with AMX, whose matmul crashes on Intel CPUs with AMX
//! (llama.cpp's open report "segfault in ggml_backend_amx_mul_mat"). Such a
//! CPU loads the `zen4` module instead, the same feature set without AMX
//! (AVX-512 with VBMI, VNNI and BF16).
//!
//! Files are replaced whenever llama.cpp's build changes them, so a rebuilt
//! llama.cpp never runs with stale modules.

use std::path::{Path, PathBuf};

/// CPU modules never shipped, with the reason.
const EXCLUDED_MODULES: &[(&str, &str)] = &[(
    "libggml-cpu-sapphirerapids.so",
    "AMX kernels (ggml_backend_amx_mul_mat crashes)",
)];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_PORTABLE").is_none() {
        return;
    }
    // Set by llama-cpp-sys-2 (links = "llama") with its `dynamic-backends`.
    let Some(modules) = std::env::var_os("DEP_LLAMA_BACKENDS_DIR").map(PathBuf::from) else {
        panic!("llama-cpp-sys-2 did not report its backends directory (DEP_LLAMA_BACKENDS_DIR)");
    };
    let libs = modules
        .parent()
        .map(|out| out.join("lib"))
        .expect("the backends directory lies in llama-cpp-sys-2's OUT_DIR");
    println!("cargo:rerun-if-changed={}", modules.display());
    println!("cargo:rerun-if-changed={}", libs.display());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR lies three levels below the profile directory")
        .to_path_buf();

    let mut staged = 0;
    for entry in read_dir(&libs) {
        let name = file_name(&entry);
        if name.starts_with("lib") && name.contains(".so") {
            // Test and example binaries in deps/ and examples/ get their own
            // copies: llama-cpp-sys-2 links libraries there too, but never
            // replaces them, and may leave a versioned name's link dangling.
            for dir in ["", "deps", "examples"].map(|sub| profile_dir.join(sub)) {
                stage(&entry, &dir.join(&name));
            }
            staged += 1;
        }
    }
    for entry in read_dir(&modules) {
        let name = file_name(&entry);
        if !name.starts_with("libggml-") || !name.ends_with(".so") {
            continue;
        }
        let target = profile_dir.join(&name);
        if let Some((_, why)) = EXCLUDED_MODULES.iter().find(|(m, _)| *m == name) {
            println!("cargo:warning=not shipping {name}: {why}");
            let _ = std::fs::remove_file(&target);
            continue;
        }
        stage(&entry, &target);
        staged += 1;
    }
    assert!(
        staged > 0,
        "no llama.cpp libraries found in {} and {}",
        libs.display(),
        modules.display()
    );
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() || p.is_symlink())
        .collect();
    entries.sort();
    entries
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copy `from` to `to` unless `to` already has the same bytes; atomically,
/// so a running binary never sees half a library. Symbolic links (a
/// library's versioned names) are copied as links.
fn stage(from: &Path, to: &Path) {
    if let Ok(link) = std::fs::read_link(from) {
        if std::fs::read_link(to).is_ok_and(|existing| existing == link) {
            return;
        }
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(&link, to)
            .unwrap_or_else(|e| panic!("cannot link {} to {}: {e}", to.display(), link.display()));
        return;
    }
    let content =
        std::fs::read(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()));
    if std::fs::read(to).is_ok_and(|existing| existing == content) {
        return;
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    let partial = to.with_extension("so.staging");
    std::fs::write(&partial, &content)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", partial.display()));
    std::fs::rename(&partial, to)
        .unwrap_or_else(|e| panic!("cannot move {} into place: {e}", to.display()));
}
