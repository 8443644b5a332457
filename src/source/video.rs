//! Video decoding through ffmpeg: any codec and container it can read, rotation metadata
//! applied, frames passed on with their own timestamps (so variable frame rates survive).

use super::flow::{DisParams, Plane};
use super::motion::{self, Continuation};
use super::{Frame, FrameInput, Source, SourceInfo, fit};
use crate::media::{AudioSource, Rational};
use crate::{Error, Result};
use ffmpeg::{codec, format, media, software::scaling, util::frame::video::Video};
use ffmpeg_next as ffmpeg;
use image::RgbImage;
use std::path::Path;

/// Which part of the video to read, and how large.
#[derive(Clone, Debug, Default)]
pub struct VideoOptions {
    pub max_size: Option<u32>,
    /// Seconds from the start.
    pub start: Option<f64>,
    /// Seconds to read.
    pub duration: Option<f64>,
    /// The [`super::scenes::CutDetector`] threshold (0: no cuts are looked for).
    pub scene_cut: f64,
    /// Start at a frame found before (a farm chunk's), by seeking: frames before it are not
    /// handed on, and its index and timestamp are those a decode from the start gives it.
    pub seek: Option<Seeked>,
}

/// Where a seek lands: the frame's index in the range, its timestamp in the working time base
/// counted from the file's start (not from the range's first frame), and that first frame's.
#[derive(Clone, Copy, Debug)]
pub struct Seeked {
    pub index: u64,
    pub ts: i64,
    pub origin: i64,
}

fn err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Video { path: path.to_owned(), reason: reason.into() }
}

/// Rotation to apply for display, clockwise degrees (0, 90, 180, 270), from the display
/// matrix or the old `rotate` tag.
fn rotation(stream: &format::stream::Stream) -> u32 {
    for side in stream.side_data() {
        if side.kind() == codec::packet::side_data::Type::DisplayMatrix && side.data().len() >= 36 {
            // SAFETY: the display matrix is nine i32 values (checked length above).
            let angle = unsafe { ffmpeg::ffi::av_display_rotation_get(side.data().as_ptr() as *const i32) };
            if angle.is_finite() {
                return ((-angle).rem_euclid(360.0) / 90.0).round() as u32 % 4 * 90;
            }
        }
    }
    stream
        .metadata()
        .get("rotate")
        .and_then(|r| r.parse::<i64>().ok())
        .map_or(0, |r| (r.rem_euclid(360) as u32 / 90) * 90)
}

struct Opened {
    ictx: format::context::Input,
    index: usize,
    decoder: ffmpeg::decoder::Video,
    /// The stream's own time base.
    stream_time_base: Rational,
    /// The time base of the frames handed on (see [`working_time_base`]).
    time_base: Rational,
    rate: Rational,
    rotate: u32,
    frames: Option<u64>,
    seconds: Option<f64>,
    has_audio: bool,
}

fn open(path: &Path) -> Result<Opened> {
    crate::media::init_ffmpeg()?;
    if !path.exists() {
        let dangling = std::fs::symlink_metadata(path).is_ok();
        return Err(err(path, if dangling { "a link to nothing (or a loop of links)" } else { "no such file" }));
    }
    if path.is_dir() {
        return Err(err(path, "is a directory, not a video"));
    }
    if path.to_str().is_none() {
        return Err(err(path, "the name is not valid UTF-8, which ffmpeg needs; rename the file"));
    }
    if !path.is_file() {
        // ffmpeg reads a video twice (probe, then decode): a pipe would hang the second time.
        return Err(err(path, "not a regular file (a pipe?); save the video to a file first"));
    }
    let ictx = format::input(&crate::media::ffmpeg_path(path))
        .map_err(|e| err(path, format!("not a readable video ({e})")))?;
    let stream = ictx.streams().best(media::Type::Video).ok_or_else(|| err(path, "has no video stream"))?;
    let index = stream.index();
    let ctx = codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| err(path, format!("bad video stream ({e})")))?;
    let decoder = ctx.decoder().video().map_err(|e| err(path, format!("unsupported video codec ({e})")))?;
    let tb = stream.time_base();
    let plausible =
        |r: ffmpeg::Rational| r.numerator() > 0 && r.denominator() > 0 && (MIN_FPS..=MAX_FPS).contains(&(f64::from(r)));
    let rate = [stream.avg_frame_rate(), stream.rate()].into_iter().find(|&r| plausible(r));
    let rate = rate.map_or(Rational::new(25, 1), |r| Rational::new(r.numerator(), r.denominator()));
    let stream_time_base = Rational::new(tb.numerator(), tb.denominator());
    if stream_time_base.num <= 0 || stream_time_base.den <= 0 {
        return Err(err(path, format!("bad time base {}/{}", stream_time_base.num, stream_time_base.den)));
    }
    let rotate = rotation(&stream);
    let frames = (stream.frames() > 0).then_some(stream.frames() as u64);
    let seconds = match stream.duration() {
        d if d > 0 => Some(d as f64 * stream_time_base.as_f64()),
        _ => (ictx.duration() > 0).then(|| ictx.duration() as f64 / ffmpeg::ffi::AV_TIME_BASE as f64),
    };
    let has_audio = ictx.streams().best(media::Type::Audio).is_some();
    Ok(Opened {
        index,
        decoder,
        stream_time_base,
        time_base: working_time_base(stream_time_base, rate),
        rate,
        rotate,
        frames,
        seconds,
        has_audio,
        ictx,
    })
}

/// Frame rates outside this range are taken for a broken header, not for the video's.
const MIN_FPS: f64 = 0.01;
const MAX_FPS: f64 = 1000.0;

/// The time base the frames are handed on in: the stream's own where it is an ordinary one (so
/// variable frame rates pass through exactly), a 90 kHz clock (or 1000 ticks a frame where the
/// rate does not divide it) where it is so fine that a container's 32-bit durations would
/// overflow: 1/2147483647 wraps after 2 s.
fn working_time_base(stream: Rational, rate: Rational) -> Rational {
    if stream.num >= 1 && stream.den >= 1 && stream.den / stream.num <= 1 << 20 {
        return stream;
    }
    match (90_000i64 * rate.den as i64) % rate.num as i64 {
        0 => Rational::new(1, 90_000),
        _ => match rate.num.checked_mul(1000) {
            Some(den) => Rational::new(rate.den, den),
            None => Rational::new(1, 90_000),
        },
    }
}

/// `t` ticks of `from` in ticks of `to`, rounded to the nearest.
fn rescale(t: i64, from: Rational, to: Rational) -> i64 {
    let num = t as i128 * from.num as i128 * to.den as i128;
    let den = from.den as i128 * to.num as i128; // > 0: both time bases are positive
    let q = (2 * num + den).div_euclid(2 * den); // halves round up, negative times too
    q.clamp(i64::MIN as i128 / 2, i64::MAX as i128 / 2) as i64
}

/// The ticks of `time_base` one frame at `rate` lasts (at least 1).
fn frame_ticks(rate: Rational, time_base: Rational) -> i64 {
    rescale(1, rate.inverse(), time_base).max(1)
}

/// What a frame converter is made for: the decoded frames' pixel format and size.
type ScalerKey = (format::Pixel, u32, u32);

/// Output size after rotation and shrinking.
fn out_size(o: &Opened, max: Option<u32>) -> (u32, u32) {
    let (w, h) = (o.decoder.width(), o.decoder.height());
    let (w, h) = if o.rotate % 180 == 90 { (h, w) } else { (w, h) };
    fit(w, h, max)
}

/// Opens the video and reports what the pipeline needs, without decoding it.
pub fn probe(path: &Path, opts: &VideoOptions) -> Result<SourceInfo> {
    let o = open(path)?;
    if o.decoder.width() == 0 || o.decoder.height() == 0 {
        return Err(err(path, "video stream has no picture size"));
    }
    let (width, height) = out_size(&o, opts.max_size);
    Ok(SourceInfo {
        width,
        height,
        rate: o.rate,
        time_base: o.time_base,
        frames: o.frames,
        seconds: o.seconds,
        has_audio: o.has_audio,
    })
}

/// Decodes every frame in the chosen range and hands it to `emit`, in order; `emit` returns
/// false to stop early. Returns the number of frames emitted.
pub fn decode(path: &Path, opts: &VideoOptions, emit: &mut dyn FnMut(Frame) -> bool) -> Result<u64> {
    decode_counting(path, opts, emit, &mut Tally::default())
}

/// What a decode saw beside its frames.
#[derive(Default)]
struct Tally {
    /// Packets the decoder refused (and skipped).
    damaged: u64,
    /// The first frame's timestamp, counted from the file's start.
    origin: Option<i64>,
}

/// [`decode`], counting what it saw into `tally`.
fn decode_counting(
    path: &Path,
    opts: &VideoOptions,
    emit: &mut dyn FnMut(Frame) -> bool,
    tally: &mut Tally,
) -> Result<u64> {
    let mut o = open(path)?;
    let (w, h) = out_size(&o, opts.max_size);
    let (sw, sh) = if o.rotate % 180 == 90 { (h, w) } else { (w, h) };
    let (stream_tb, work_tb) = (o.stream_time_base, o.time_base);
    let tb = work_tb.as_f64();
    let step = frame_ticks(o.rate, work_tb);
    let start_ts = opts.start.map(|s| (s / tb).round() as i64);
    let end_ts = opts.duration.map(|d| ((opts.start.unwrap_or(0.0) + d) / tb).round() as i64);
    // Timestamps as handed on: the decoder's, in the working time base, made strictly
    // increasing; one frame after the last where a frame has none (raw .h264 streams) or
    // repeats one.
    let mut last_ts: Option<i64> = None;
    if let Some(k) = opts.seek {
        // To a keyframe before the frame. Containers seek by decoding time: a keyframe whose
        // decoding time is before the frame may still be shown after it (B-frames), and the
        // frames shown between are then lost. A margin longer than any reordering (a second,
        // and at least 16 frames) lands on a keyframe shown before the frame.
        let margin = (16.0 / o.rate.as_f64()).max(1.0);
        let t = ((k.ts as f64 * tb - margin) * ffmpeg::ffi::AV_TIME_BASE as f64).floor() as i64;
        o.ictx.seek(t, ..t).map_err(|e| err(path, format!("cannot seek to frame {} ({e})", k.index + 1)))?;
    } else if let Some(s) = opts.start.filter(|&s| s > 0.0) {
        let t = (s * ffmpeg::ffi::AV_TIME_BASE as f64) as i64;
        o.ictx.seek(t, ..t).map_err(|e| err(path, format!("cannot seek to {s} s ({e})")))?;
    }
    let skip_before = opts.seek.map(|k| k.ts);
    let mut scaler: Option<(ScalerKey, scaling::Context)> = None;
    let mut first_ts: Option<i64> = opts.seek.map(|k| k.origin);
    let mut count = opts.seek.map_or(0, |k| k.index);
    let counted_from = count;
    let mut done = false;
    let mut handle =
        |frame: &Video, scaler: &mut Option<(ScalerKey, scaling::Context)>, count: &mut u64| -> Result<bool> {
            let ts = match (frame.timestamp().map(|t| rescale(t, stream_tb, work_tb)), last_ts) {
                (Some(t), Some(last)) if t <= last => last + step,
                (Some(t), _) => t,
                (None, Some(last)) => last + step,
                (None, None) => 0,
            };
            last_ts = Some(ts);
            if start_ts.is_some_and(|s| ts < s) || skip_before.is_some_and(|s| ts < s) {
                return Ok(true);
            }
            if end_ts.is_some_and(|e| ts >= e) {
                return Ok(false);
            }
            // A stream whose picture size or format changes midway gets a new converter, and every
            // frame comes out at the first frame's size.
            let key = (frame.format(), frame.width(), frame.height());
            let sc = match scaler {
                Some((k, s)) if *k == key => s,
                _ => {
                    let context = scaling::Context::get(
                        frame.format(),
                        frame.width(),
                        frame.height(),
                        format::Pixel::RGB24,
                        sw,
                        sh,
                        scaling::Flags::BICUBIC,
                    )
                    .map_err(|e| err(path, format!("cannot convert frames ({e})")))?;
                    &mut scaler.insert((key, context)).1
                }
            };
            let mut rgb = Video::empty();
            sc.run(frame, &mut rgb).map_err(|e| err(path, format!("cannot convert a frame ({e})")))?;
            let stride = rgb.stride(0);
            let data = rgb.data(0);
            let mut img = RgbImage::new(sw, sh);
            for y in 0..sh as usize {
                img.as_mut()[y * sw as usize * 3..(y + 1) * sw as usize * 3]
                    .copy_from_slice(&data[y * stride..y * stride + sw as usize * 3]);
            }
            let img = match o.rotate {
                90 => image::imageops::rotate90(&img),
                180 => image::imageops::rotate180(&img),
                270 => image::imageops::rotate270(&img),
                _ => img,
            };
            let first = *first_ts.get_or_insert(ts);
            tally.origin = Some(first);
            let keep = emit(Frame { index: *count, pts: ts - first, image: img, motion: None, cut: false });
            *count += 1;
            Ok(keep)
        };
    let mut decoded = Video::empty();
    for (stream, packet) in o.ictx.packets() {
        if stream.index() != o.index {
            continue;
        }
        if o.decoder.send_packet(&packet).is_err() {
            tally.damaged += 1;
            continue; // a damaged packet: skip it, as ffmpeg does
        }
        while o.decoder.receive_frame(&mut decoded).is_ok() {
            if !handle(&decoded, &mut scaler, &mut count)? {
                done = true;
                break;
            }
        }
        if done {
            break;
        }
    }
    if !done {
        let _ = o.decoder.send_eof();
        while o.decoder.receive_frame(&mut decoded).is_ok() {
            if !handle(&decoded, &mut scaler, &mut count)? {
                break;
            }
        }
    }
    if count == counted_from && opts.seek.is_some() {
        return Err(err(path, format!("no frame at or after frame {}", counted_from + 1)));
    }
    if count == 0 {
        let reason = match (opts.start, opts.duration) {
            (None, None) => "no frames could be decoded (a corrupt file?)".to_owned(),
            (start, duration) => {
                let from = start.unwrap_or(0.0);
                let to = duration.map_or("its end".to_owned(), |d| format!("{} s", crate::error::number(from + d)));
                let from = crate::error::number(from);
                let length = o.seconds.map_or(String::new(), |s| format!(" ({s:.2} s long)"));
                format!("no frame falls between {from} s and {to} of the video{length}")
            }
        };
        return Err(err(path, reason));
    }
    Ok(count)
}

/// Container-level facts about a media file, for checks and tests.
#[derive(Clone, Debug)]
pub struct MediaSummary {
    pub width: u32,
    pub height: u32,
    pub rate: Rational,
    /// Frames actually decodable.
    pub frames: u64,
    pub video_seconds: f64,
    pub audio_seconds: Option<f64>,
}

/// Decodes a whole file to count its frames and reads its stream durations.
pub fn summarize(path: &Path) -> Result<MediaSummary> {
    let info = probe(path, &VideoOptions::default())?;
    let o = open(path)?;
    let secs = |s: &format::stream::Stream| {
        let tb = s.time_base();
        (s.duration() > 0).then(|| s.duration() as f64 * tb.numerator() as f64 / tb.denominator() as f64)
    };
    let video_seconds = o.ictx.stream(o.index).and_then(|s| secs(&s)).unwrap_or(0.0);
    let audio = o.ictx.streams().best(media::Type::Audio).map(|s| (s.index(), secs(&s), s.time_base()));
    // Matroska and WebM give streams no duration: the end of the last audio packet instead.
    let audio_seconds = match audio {
        Some((_, Some(seconds), _)) => Some(seconds),
        Some((index, None, tb)) => {
            let mut ictx = open(path)?.ictx;
            let end = ictx
                .packets()
                .filter(|(s, _)| s.index() == index)
                .filter_map(|(_, p)| p.pts().map(|pts| pts + p.duration()))
                .max();
            end.map(|e| e as f64 * tb.numerator() as f64 / tb.denominator() as f64)
        }
        None => None,
    };
    let frames = decode(path, &VideoOptions { max_size: Some(32), ..Default::default() }, &mut |_| true)?;
    Ok(MediaSummary { width: info.width, height: info.height, rate: info.rate, frames, video_seconds, audio_seconds })
}

/// A video, every frame dreamed, each continuing the previous dreamed frame as
/// `continuation` says (along the optical flow, computed here on the decode stage, or by
/// blending).
pub struct VideoSource {
    path: std::path::PathBuf,
    options: VideoOptions,
    continuation: Continuation,
    info: SourceInfo,
    /// Packets the decoder refused (damaged data), skipped as ffmpeg skips them.
    damaged: std::sync::atomic::AtomicU64,
    /// Keyframed blend or warp weights.
    animation: crate::dream::animation::Animation,
}

impl VideoSource {
    /// Opens and probes the video.
    pub fn open(path: &Path, options: VideoOptions, continuation: Continuation) -> Result<VideoSource> {
        let info = probe(path, &options)?;
        Ok(VideoSource {
            path: path.to_owned(),
            options,
            continuation,
            info,
            damaged: Default::default(),
            animation: Default::default(),
        })
    }

    /// The blend or warp weight of frame k follows its timeline.
    pub fn with_animation(self, animation: crate::dream::animation::Animation) -> VideoSource {
        VideoSource { animation, ..self }
    }
}

impl VideoSource {
    fn decode_with(&self, options: &VideoOptions, needed: u64, emit: &mut dyn FnMut(Frame) -> bool) -> Result<()> {
        let mut tally = Tally::default();
        let mut scenes = super::scenes::CutDetector::new(options.scene_cut);
        // With DEEPDREAM_TRACE=1: decoding, the flow and the cut detector per frame.
        let trace = std::cell::RefCell::new((
            crate::pipeline::Trace::new("decode stage", &["decode", "flow", "scene cut", "hand to dreamer"]),
            std::time::Instant::now(),
        ));
        let lap = |phase: usize| {
            let (t, clock) = &mut *trace.borrow_mut();
            t.add(phase, clock);
        };
        let emit = &mut |mut frame: Frame| {
            if matches!(self.continuation, Continuation::Blend { .. }) {
                lap(0);
                lap(1);
            }
            frame.cut = scenes.next(&frame.image);
            lap(2);
            let go_on = emit(frame);
            lap(3);
            go_on
        };
        let decoded = match self.continuation {
            Continuation::Blend { .. } => decode_counting(&self.path, options, emit, &mut tally),
            Continuation::Flow { .. } => {
                let params = DisParams::for_size(self.info.width as usize, self.info.height as usize);
                let mut previous: Option<Plane> = None;
                let mut with_motion = |mut frame: Frame| {
                    lap(0);
                    let plane = Plane::luma(&frame.image);
                    if frame.index >= needed {
                        frame.motion = previous.as_ref().map(|p| Box::new(motion::motion(p, &plane, &params)));
                    }
                    previous = Some(plane);
                    lap(1);
                    emit(frame)
                };
                decode_counting(&self.path, options, &mut with_motion, &mut tally)
            }
        };
        self.damaged.store(tally.damaged, std::sync::atomic::Ordering::Relaxed);
        decoded.map(|_| ())
    }
}

impl Source for VideoSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn decode(&self, needed: u64, emit: &mut dyn FnMut(Frame) -> bool) -> Result<()> {
        self.decode_with(&self.options, needed, emit)
    }

    /// Seeks to the keyframe before frame `from.index` (found from the first frame's timestamp
    /// and `from.pts`, as a decode from the start counts them) and decodes from there. The
    /// scene cuts of the first frames handed on are not known (their history was skipped).
    fn decode_from(&self, from: super::SeekTo, needed: u64, emit: &mut dyn FnMut(Frame) -> bool) -> Result<()> {
        let mut tally = Tally::default();
        decode_counting(&self.path, &self.options, &mut |_| false, &mut tally)?;
        let origin = tally.origin.ok_or_else(|| err(&self.path, "no frames could be decoded"))?;
        let seek = Seeked { index: from.index, ts: origin + from.pts, origin };
        let mut emitted = false;
        let seeked = self.decode_with(&VideoOptions { seek: Some(seek), ..self.options.clone() }, needed, &mut |f| {
            emitted = true;
            emit(f)
        });
        match seeked {
            // A container that cannot seek: from the start, as a plain decode.
            Err(_) if !emitted => self.decode_with(&self.options, needed, emit),
            result => result,
        }
    }

    fn notes(&self) -> Vec<String> {
        match self.damaged.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Vec::new(),
            n => vec![format!("{n} damaged packets of {} could not be decoded and were skipped", self.path.display())],
        }
    }

    fn dream_input(&self, frame: Frame, previous: Option<&RgbImage>) -> FrameInput {
        use crate::dream::animation::Target;
        let continuation = match self.continuation {
            Continuation::Flow { warp, cut } => {
                Continuation::Flow { warp: self.animation.value(&Target::Warp, frame.index).unwrap_or(warp), cut }
            }
            Continuation::Blend { blend } => {
                Continuation::Blend { blend: self.animation.value(&Target::Blend, frame.index).unwrap_or(blend) }
            }
        };
        match (continuation, previous, &frame.motion) {
            (Continuation::Flow { warp, cut }, Some(prev), Some(m)) if !frame.cut && m.matched >= cut => {
                FrameInput { image: motion::continue_from(&frame.image, prev, m, warp), continues: true }
            }
            // The first frame, or the first of a new shot: the full dream.
            (Continuation::Flow { .. }, ..) => FrameInput { image: frame.image, continues: false },
            (Continuation::Blend { blend }, Some(prev), _) if blend > 0.0 && !frame.cut => {
                FrameInput { image: super::blend_images(&frame.image, prev, blend), continues: true }
            }
            (Continuation::Blend { .. }, previous, _) => {
                FrameInput { continues: previous.is_some() && !frame.cut, image: frame.image }
            }
        }
    }

    fn audio(&self) -> Option<AudioSource> {
        self.info.has_audio.then(|| AudioSource {
            path: self.path.clone(),
            start: self.options.start.unwrap_or(0.0),
            duration: self.options.duration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescaling_rounds_to_the_nearest_tick_on_both_sides_of_zero() {
        let (quarter, one) = (Rational::new(1, 4), Rational::new(1, 1));
        let got: Vec<i64> = [-3, -2, -1, 0, 1, 2, 3].iter().map(|&t| rescale(t, quarter, one)).collect();
        assert_eq!(got, [-1, 0, 0, 0, 0, 1, 1]);
        assert_eq!(rescale(1001, Rational::new(1, 30000), Rational::new(1, 90_000)), 3003);
        assert_eq!(frame_ticks(Rational::new(30000, 1001), Rational::new(1, 90_000)), 3003);
    }

    #[test]
    fn fine_time_bases_are_replaced_and_ordinary_ones_kept() {
        let rate = Rational::new(24, 1);
        assert_eq!(working_time_base(Rational::new(1, 12288), rate), Rational::new(1, 12288));
        assert_eq!(working_time_base(Rational::new(1, i32::MAX), rate), Rational::new(1, 90_000));
        assert_eq!(working_time_base(Rational::new(1, i32::MAX), Rational::new(7, 1)), Rational::new(1, 7000));
    }
}
