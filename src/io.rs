//! Still images in and out. Outputs go to a temporary file beside the target and are renamed
//! into place only when complete, so a failed run never leaves a half-written file.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use image::{ImageFormat, RgbImage};
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// `dir/.name.SUFFIX`: a hidden companion of `dest` in its directory (a staging file, a frame
/// store, a lock).
pub fn beside(dest: &Path, suffix: &str) -> PathBuf {
    dest.with_file_name(format!(".{}.{suffix}", hidden_stem(dest)))
}

/// The name part of [`beside`]: the destination's name, or, where that would make the
/// companion's name longer than a file system allows (255 bytes), its first bytes and a hash
/// of the whole.
fn hidden_stem(dest: &Path) -> String {
    /// The longest companion suffix with its dots: `.` + `.4194304.tmp`.
    const ROOM: usize = 2 + 16;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    if name.len() + ROOM <= 255 {
        return name;
    }
    let mut cut = 255 - ROOM - 9;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    use sha2::Digest;
    format!("{}~{}", &name[..cut], &hex(&sha2::Sha256::digest(name.as_bytes()))[..8])
}

/// `dir/.name.PID.tmp`: same directory (so the rename is atomic), hidden, unique per process.
fn temp_path(dest: &Path) -> PathBuf {
    beside(dest, &format!("{}.tmp", std::process::id()))
}

/// A file or directory being written beside its destination: [`Staged::commit`] moves it into
/// place; dropped uncommitted (an error, a panic), it is removed, so no half-written output
/// ever carries the destination's name. The one temp-then-rename of the project.
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staged {
    /// Stages `dest`; whatever an earlier run of this process left at the staging path goes,
    /// and so do the staging files of runs that died without cleaning up (killed with
    /// SIGKILL, or by a power cut): `.NAME.PID.tmp` whose process no longer exists.
    pub fn new(dest: &Path) -> Staged {
        let tmp = temp_path(dest);
        remove_any(&tmp);
        remove_orphans(dest);
        Staged { tmp, dest: dest.to_owned(), committed: false }
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Moves the staged file or directory over the destination.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| Error::Write { path: self.dest.clone(), reason: e.to_string() })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            remove_any(&self.tmp);
        }
    }
}

/// Removes `.NAME.PID.tmp` beside `dest` where no process PID runs (Linux, through /proc;
/// elsewhere nothing is removed) and the file has not changed for [`ORPHAN_AGE`] (a process
/// in another PID namespace, or on another host sharing the directory, may still be writing
/// it). Each directory is looked at once per process: a frame store saves thousands of files.
fn remove_orphans(dest: &Path) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let (Some(_), Some(dir)) = (dest.file_name(), dest.parent()) else { return };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    {
        let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
        if swept.iter().any(|d| d == dir) {
            return;
        }
        swept.push(dir.to_owned());
    }
    let prefix = format!(".{}.", hidden_stem(dest));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = file.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(".tmp"));
        let stale =
            || entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ORPHAN_AGE));
        if let Some(pid) = pid.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && !Path::new("/proc").join(pid).exists()
            && stale()
        {
            remove_any(&entry.path());
        }
    }
}

/// How long a staging file of a process that is gone must have been left alone before it is
/// taken for an orphan.
const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

fn remove_any(path: &Path) {
    match path.is_dir() {
        true => drop(std::fs::remove_dir_all(path)),
        false => drop(std::fs::remove_file(path)),
    }
}

/// Writes `dest` through `write` (given the staging path) and moves it into place when
/// `write` succeeds.
pub fn write_atomic(dest: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let staged = Staged::new(dest);
    write(staged.path())?;
    staged.commit()
}

/// The largest image file read.
const MAX_IMAGE_BYTES: u64 = 512 << 20;
/// The largest picture decoded: a side, and the decoded bytes.
const MAX_IMAGE_SIDE: u32 = 32768;
const MAX_IMAGE_ALLOC: u64 = 2 << 30;

/// Reads an image as RGB, shrunk (never enlarged) so its longer side is at most `max_size`.
pub fn load_rgb(path: &Path, max_size: Option<u32>) -> Result<RgbImage> {
    load_rgb_with_metadata(path, max_size).map(|(img, _)| img)
}

/// What a photo says about itself that its dream should keep: its colour profile, and its
/// EXIF (camera, date, place) with the orientation reset, since the pixels are turned upright.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub icc: Option<Vec<u8>>,
    pub exif: Option<Vec<u8>>,
}

/// [`load_rgb`], with the image's [`Metadata`].
pub fn load_rgb_with_metadata(path: &Path, max_size: Option<u32>) -> Result<(RgbImage, Metadata)> {
    let err = |reason: String| Error::Image { path: path.to_owned(), reason };
    if !path.exists() {
        let dangling = std::fs::symlink_metadata(path).is_ok();
        return Err(err(if dangling { "a link to nothing (or a loop of links)" } else { "no such file" }.into()));
    }
    if path.is_dir() {
        return Err(err("is a directory, not an image".into()));
    }
    // Read whole, then decode: a pipe or process substitution (`<(curl ...)`) cannot seek. At
    // most MAX_IMAGE_BYTES: `/dev/zero` or a sparse 10 GB file is not read until memory runs out.
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    file.take(MAX_IMAGE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        return Err(err(format!("larger than {} MiB, more than any image deepdream can dream", MAX_IMAGE_BYTES >> 20)));
    }
    decode_rgb_with_metadata(bytes, path, max_size)
}

/// [`load_rgb`] of an image already in memory; errors name `path`.
pub fn decode_rgb(bytes: Vec<u8>, path: &Path, max_size: Option<u32>) -> Result<RgbImage> {
    decode_rgb_with_metadata(bytes, path, max_size).map(|(img, _)| img)
}

fn decode_rgb_with_metadata(bytes: Vec<u8>, path: &Path, max_size: Option<u32>) -> Result<(RgbImage, Metadata)> {
    let err = |reason: String| Error::Image { path: path.to_owned(), reason };
    // The decoder fills a cut-off JPEG with grey and calls it a success.
    let truncated_jpeg = image::guess_format(&bytes).ok() == Some(ImageFormat::Jpeg) && !ends_a_jpeg(&bytes);
    let video = looks_like_a_video(&bytes);
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes));
    let mut reader = reader.with_guessed_format().map_err(|e| err(e.to_string()))?;
    if reader.format().is_none() {
        if video {
            return Err(err("a video, not an image: dream it with `deepdream video`".into()));
        }
        return Err(err("not an image format deepdream can read (PNG, JPEG, BMP, GIF, WebP, TIFF)".into()));
    }
    if truncated_jpeg {
        return Err(err("truncated image: the JPEG ends before its end-of-image marker".into()));
    }
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => err(format!(
            "declares a picture larger than {MAX_IMAGE_SIDE} pixels a side or {} MiB decoded; not decoded",
            MAX_IMAGE_ALLOC >> 20
        )),
        e => err(format!("corrupt or unsupported image: {e}")),
    };
    // A few hundred bytes can declare a 65535 x 65535 picture: the limits are checked against
    // the header before anything is allocated.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    // Metadata a decoder cannot read is left behind, not an error.
    // Only an RGB profile describes the RGB pixels written (a grey or CMYK one would not).
    let icc = image::ImageDecoder::icc_profile(&mut decoder).ok().flatten().filter(|p| p.get(16..20) == Some(b"RGB "));
    let mut exif = image::ImageDecoder::exif_metadata(&mut decoder).ok().flatten();
    if let Some(chunk) = &mut exif {
        let _ = image::metadata::Orientation::remove_from_exif_chunk(chunk);
    }
    // A phone photo stores its pixels sideways and says how to turn them (EXIF orientation).
    let orientation =
        image::ImageDecoder::orientation(&mut decoder).unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
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
    Ok((img.to_rgb8(), Metadata { icc, exif }))
}

/// The evaluation transform of torchvision and timm: the shorter side resized to
/// `crop / 0.875` (256 for a 224 crop, 342 for 299), then the centre `crop` x `crop` square.
pub fn center_crop(img: &RgbImage, crop: u32) -> RgbImage {
    let short = (crop as f64 / 0.875).round();
    let (w, h) = img.dimensions();
    // The square of the source that becomes the crop, cut first: resizing the whole of a
    // 1 x 65536 strip to a 256-pixel short side would need gigabytes.
    let side = ((crop as f64 * w.min(h) as f64 / short).round() as u32).clamp(1, w.min(h));
    let (left, top) = (((w - side) as f64 / 2.0).round() as u32, ((h - side) as f64 / 2.0).round() as u32);
    let square = image::imageops::crop_imm(img, left, top, side, side).to_image();
    image::imageops::resize(&square, crop, crop, image::imageops::FilterType::Triangle)
}

/// Whether `bytes` open like a video container: MP4/MOV (`ftyp`), Matroska/WebM (EBML), AVI.
fn looks_like_a_video(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(b"ftyp")
        || bytes.starts_with(&[0x1a, 0x45, 0xdf, 0xa3])
        || (bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"AVI "))
}

/// Whether a JPEG's last bytes hold its end-of-image marker (FF D9). Inside the compressed
/// data an FF is always followed by 00 or a restart marker, so a cut-off file has none there;
/// some writers append a few bytes after the marker, hence the search of the tail.
fn ends_a_jpeg(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// An RGB image as a `[1, 3, h, w]` f32 tensor of 0..255 values.
pub fn to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    // The bytes travel (a quarter of the floats) and become floats where they land.
    let hwc = Tensor::from_vec(img.as_raw().clone(), (h as usize, w as usize, 3), &Device::Cpu)?.to_device(device)?;
    Ok(hwc.to_dtype(candle_core::DType::F32)?.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?)
}

/// A `[1, 3, h, w]` tensor of 0..255 values back to an image, rounded and clamped.
pub fn to_image(pixels: &Tensor) -> Result<RgbImage> {
    let (_, c, h, w) = pixels.dims4()?;
    if c != 3 {
        return Err(Error::usage(format!("expected 3 channels, got {c}")));
    }
    // Rounded and made bytes where the pixels are: a quarter of the floats come back.
    let bytes = pixels
        .clamp(0f32, 255f32)?
        .round()?
        .to_dtype(candle_core::DType::U8)?
        .squeeze(0)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<u8>()?;
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

/// Checks that a `w` x `h` image fits `path`'s format (WebP stores at most 16383 pixels a
/// side, JPEG 65535), before any work is spent on it.
pub fn check_size(path: &Path, (w, h): (u32, u32)) -> Result<()> {
    let limit = match output_format(path)? {
        ImageFormat::WebP => 16383,
        ImageFormat::Jpeg => 65535,
        _ => return Ok(()),
    };
    if w > limit || h > limit {
        let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
        return Err(Error::Output {
            path: path.to_owned(),
            reason: format!(
                "a {w}x{h} image is too large for .{ext} (at most {limit} pixels a side); use .png or --max-size"
            ),
        });
    }
    Ok(())
}

/// Checks up front that `path` can be written, so a long render does not fail at the end.
pub fn check_writable(path: &Path) -> Result<()> {
    output_format(path)?;
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(Error::Output { path: path.to_owned(), reason: "ends with '/'; give a file name".into() });
    }
    if path.is_dir() {
        return Err(Error::Output { path: path.to_owned(), reason: "is a directory".into() });
    }
    let staged = Staged::new(path);
    std::fs::write(staged.path(), b"").map_err(|e| Error::Output { path: path.to_owned(), reason: e.to_string() })
}

/// Writes the image in `format` to a temporary file and renames it over `path`; errors name
/// `path`.
pub fn save_as(img: &RgbImage, path: &Path, format: ImageFormat) -> Result<()> {
    write_atomic(path, |tmp| {
        write_image(img, tmp, format).map_err(|e| match e {
            Error::Write { reason, .. } => Error::Write { path: path.to_owned(), reason },
            e => e,
        })
    })
}

/// How a still image is written: JPEG quality (1..100), and the input's metadata to keep.
#[derive(Clone, Debug)]
pub struct StillOptions {
    pub quality: u8,
    pub metadata: Metadata,
}

/// The JPEG quality when none is given.
pub const DEFAULT_QUALITY: u8 = 95;

impl Default for StillOptions {
    fn default() -> Self {
        StillOptions { quality: DEFAULT_QUALITY, metadata: Metadata::default() }
    }
}

/// Writes a still image atomically, at `options`' quality and with its metadata where the
/// format holds it (ICC and EXIF in PNG, JPEG and WebP; ICC in TIFF; none in BMP).
pub fn save_still(img: &RgbImage, path: &Path, options: &StillOptions) -> Result<()> {
    let format = output_format(path)?;
    let err = |e: image::ImageError| Error::Write {
        path: path.to_owned(),
        reason: e.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
    };
    /// Encodes with the metadata the format takes (an encoder refuses what it cannot hold).
    fn encode(mut enc: impl image::ImageEncoder, img: &RgbImage, meta: &Metadata) -> image::ImageResult<()> {
        if let Some(icc) = meta.icc.clone() {
            let _ = enc.set_icc_profile(icc);
        }
        if let Some(exif) = meta.exif.clone() {
            let _ = enc.set_exif_metadata(exif);
        }
        enc.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
    }
    let mut bytes = Vec::new();
    let meta = &options.metadata;
    match format {
        ImageFormat::Jpeg => {
            encode(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, options.quality), img, meta)
        }
        ImageFormat::Png => encode(image::codecs::png::PngEncoder::new(&mut bytes), img, meta),
        ImageFormat::WebP => encode(image::codecs::webp::WebPEncoder::new_lossless(&mut bytes), img, meta),
        ImageFormat::Tiff => encode(image::codecs::tiff::TiffEncoder::new(std::io::Cursor::new(&mut bytes)), img, meta),
        _ => return save_as(img, path, format),
    }
    .map_err(err)?;
    write_atomic(path, |tmp| {
        std::fs::write(tmp, &bytes).map_err(|e| Error::Write { path: path.to_owned(), reason: e.to_string() })
    })
}

/// Encodes the image in memory and writes it out with every error reported: the encoders'
/// own buffered writers drop a failed flush (a full disk then gave a cut-off file and success).
pub fn write_image(img: &RgbImage, path: &Path, format: ImageFormat) -> Result<()> {
    let err = |reason: String| Error::Write { path: path.to_owned(), reason };
    let mut bytes = std::io::Cursor::new(Vec::new());
    // The image crate's encoders can put the reason on a second line.
    let one_line = |e: image::ImageError| e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    img.write_to(&mut bytes, format).map_err(|e| err(one_line(e)))?;
    std::fs::write(path, bytes.into_inner()).map_err(|e| err(e.to_string()))
}

/// Writes a video frame as PNG with fast compression (fdeflate): 512x512 in about 5 ms where
/// the default level takes about 48 ms, for files 4% larger. Frames of the frame store and of
/// PNG-directory outputs are written this way, off the dream's thread but still on the
/// render's critical path when the GPU dreams a frame in tens of milliseconds.
pub fn write_png_fast(img: &RgbImage, path: &Path) -> Result<()> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let err = |reason: String| Error::Write { path: path.to_owned(), reason };
    let mut bytes = Vec::with_capacity(img.as_raw().len() / 2);
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, FilterType::Adaptive)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| err(e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")))?;
    std::fs::write(path, bytes).map_err(|e| err(e.to_string()))
}

/// Whether writing `output` would overwrite or replace `input`: the same file (by device and
/// inode, so symlinks and `./` spellings count), or a directory output that holds the input.
pub fn would_destroy(input: &Path, output: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let output = PathBuf::from(output.to_string_lossy().trim_end_matches('/'));
    if let (Ok(a), Ok(b)) = (std::fs::metadata(input), std::fs::metadata(&output))
        && a.dev() == b.dev()
        && a.ino() == b.ino()
    {
        return true;
    }
    match (input.canonicalize(), output.canonicalize()) {
        (Ok(i), Ok(o)) => i.starts_with(&o),
        _ => false,
    }
}

/// Identifies a file's content cheaply (for resume fingerprints): its size, modification
/// time, and a sha256 of its first and last MiB.
pub fn content_hash(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::{Read, Seek, SeekFrom};
    let err = |e: std::io::Error| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    let mut file = std::fs::File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    let mut h = sha2::Sha256::new();
    h.update(format!("{} {}.{:09}", meta.len(), mtime.as_secs(), mtime.subsec_nanos()));
    let mut buf = Vec::with_capacity(1 << 20);
    file.by_ref().take(1 << 20).read_to_end(&mut buf).map_err(err)?;
    h.update(&buf);
    if meta.len() > 2 << 20 {
        buf.clear();
        file.seek(SeekFrom::End(-(1 << 20))).map_err(err)?;
        file.read_to_end(&mut buf).map_err(err)?;
        h.update(&buf);
    }
    Ok(hex(&h.finalize()))
}

/// Lower-case hexadecimal of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod crop_tests {
    #[test]
    fn the_centre_crop_is_torchvisions() {
        // 600x300: the shorter side to 256 (512x256), then the centre 224: columns 144..368.
        let img = image::RgbImage::from_fn(600, 300, |x, _| image::Rgb([(x * 255 / 599) as u8, 0, 0]));
        let c = super::center_crop(&img, 224);
        assert_eq!(c.dimensions(), (224, 224));
        let expect = |col: f64| (col / 512.0 * 600.0) * 255.0 / 599.0;
        assert!((c.get_pixel(0, 100)[0] as f64 - expect(144.5)).abs() < 3.0);
        assert!((c.get_pixel(223, 100)[0] as f64 - expect(367.5)).abs() < 3.0);
    }
}
