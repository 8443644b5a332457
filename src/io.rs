//! Still images in and out. Outputs go to a temporary file beside the target and are renamed
//! into place only when complete, so a failed run never leaves a half-written file.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use image::{ImageFormat, RgbImage};
use std::path::{Path, PathBuf};

/// `dir/.name.PID.tmp`: same directory (so the rename is atomic), hidden, unique per process.
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    dest.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Reads an image as RGB, shrunk (never enlarged) so its longer side is at most `max_size`.
pub fn load_rgb(path: &Path, max_size: Option<u32>) -> Result<RgbImage> {
    let err = |reason: String| Error::Image { path: path.to_owned(), reason };
    if !path.exists() {
        return Err(err("no such file".into()));
    }
    let reader = image::ImageReader::open(path).map_err(|e| err(e.to_string()))?;
    let reader = reader.with_guessed_format().map_err(|e| err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(err("not an image format deepdream can read (PNG, JPEG, BMP, GIF, WebP, TIFF)".into()));
    }
    let img = reader.decode().map_err(|e| err(format!("corrupt or unsupported image: {e}")))?;
    let img = match max_size {
        Some(m) if img.width().max(img.height()) > m => {
            let scale = m as f64 / img.width().max(img.height()) as f64;
            let (w, h) = (
                (img.width() as f64 * scale).round().max(1.0) as u32,
                (img.height() as f64 * scale).round().max(1.0) as u32,
            );
            img.resize_exact(w, h, image::imageops::FilterType::Lanczos3)
        }
        _ => img,
    };
    Ok(img.to_rgb8())
}

/// An RGB image as a `[1, 3, h, w]` f32 tensor of 0..255 values.
pub fn to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let hwc = Tensor::from_vec(
        img.as_raw().iter().map(|&v| v as f32).collect::<Vec<_>>(),
        (h as usize, w as usize, 3),
        &Device::Cpu,
    )?;
    Ok(hwc.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?.to_device(device)?)
}

/// A `[1, 3, h, w]` tensor of 0..255 values back to an image, rounded and clamped.
pub fn to_image(pixels: &Tensor) -> Result<RgbImage> {
    let (_, c, h, w) = pixels.dims4()?;
    if c != 3 {
        return Err(Error::usage(format!("expected 3 channels, got {c}")));
    }
    let hwc = pixels.squeeze(0)?.permute((1, 2, 0))?.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    let bytes = hwc.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect();
    Ok(RgbImage::from_raw(w as u32, h as u32, bytes).expect("buffer matches dimensions"))
}

/// The still-image format for an output path, from its extension.
pub fn output_format(path: &Path) -> Result<ImageFormat> {
    let fmt = ImageFormat::from_path(path).ok();
    match fmt {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Bmp | ImageFormat::Tiff | ImageFormat::WebP)) => {
            Ok(f)
        }
        _ => Err(Error::Output {
            path: path.to_owned(),
            reason: "unsupported output extension; use .png, .jpg, .bmp, .tif or .webp".into(),
        }),
    }
}

/// Checks up front that `path` can be written, so a long render does not fail at the end.
pub fn check_writable(path: &Path) -> Result<()> {
    output_format(path)?;
    let tmp = temp_path(path);
    std::fs::write(&tmp, b"").map_err(|e| Error::Output { path: path.to_owned(), reason: e.to_string() })?;
    let _ = std::fs::remove_file(&tmp);
    if path.is_dir() {
        return Err(Error::Output { path: path.to_owned(), reason: "is a directory".into() });
    }
    Ok(())
}

/// Writes the image to a temporary file and renames it over `path` when complete.
pub fn save(img: &RgbImage, path: &Path) -> Result<()> {
    let format = output_format(path)?;
    let tmp = temp_path(path);
    let err = |e: String| Error::Output { path: path.to_owned(), reason: e };
    let result = img
        .save_with_format(&tmp, format)
        .map_err(|e| err(e.to_string()))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| err(e.to_string())));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
