//! Image files named on the command line.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Expands folders into their image files (by extension, sorted); files are
/// kept as given. No paths means the bundled sample photos.
pub(crate) fn image_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let default = [sample_images_dir()];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("listing {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| is_image(f))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    anyhow::ensure!(!files.is_empty(), "no image files found in {paths:?}");
    Ok(files)
}

fn is_image(file: &Path) -> bool {
    file.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(onnx_lambda::decode::has_image_extension)
}

/// The sample photos shipped with the repository.
fn sample_images_dir() -> PathBuf {
    let rel = Path::new("tests/data/images");
    if rel.is_dir() {
        rel.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }
}
