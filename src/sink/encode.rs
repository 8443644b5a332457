//! MP4/MOV/MKV (H.264, yuv420p, CRF and preset, audio copied from the source), WebM (VP9, the
//! audio re-encoded as Opus unless it is Opus or Vorbis already) and
//! GIF (palettegen + paletteuse through libavfilter, looping forever) through ffmpeg.

use super::{FrameSink, SinkKind, SinkOptions};
use crate::media::{AudioSource, FrameFormat, Rational};
use crate::{Error, Result};
use ffmpeg::{Dictionary, Packet, codec, encoder, filter, format, media, software::scaling, util::frame::video::Video};
use ffmpeg_next as ffmpeg;
use image::RgbImage;
use std::path::{Path, PathBuf};

fn ff(path: &Path, what: &str) -> impl Fn(ffmpeg::Error) -> Error + use<> {
    let (path, what) = (path.to_owned(), what.to_owned());
    move |e| Error::Write { path: path.clone(), reason: format!("{what}: {e}") }
}

fn rational(r: Rational) -> ffmpeg::Rational {
    ffmpeg::Rational::new(r.num, r.den)
}

/// Audio packets copied from the source video into the output, or re-encoded where the
/// output cannot hold the source's codec ([`Transcode`]).
struct AudioCopy {
    ictx: format::context::Input,
    in_index: usize,
    out_index: usize,
    in_tb: ffmpeg::Rational,
    start_ts: i64,
    end_ts: Option<i64>,
    done: bool,
    transcode: Option<Transcode>,
}

/// The source's audio decoded, resampled to 48 kHz float stereo (or mono) in frames of the
/// encoder's size by a filter graph, and encoded as Opus: a WebM holds only Opus or Vorbis,
/// and most sources carry AAC.
struct Transcode {
    decoder: ffmpeg::decoder::Audio,
    graph: filter::Graph,
    encoder: ffmpeg::encoder::Audio,
    /// The next frame's pts at 1/48000: where the first packet falls after the start (a
    /// track that begins late keeps its delay), then counted on by the samples encoded.
    samples: Option<i64>,
}

/// Opus's only sample rate.
const OPUS_RATE: i32 = 48_000;

impl Transcode {
    fn new(octx: &mut format::context::Output, ist: &format::stream::Stream) -> Result<(Transcode, usize)> {
        fn err(what: &'static str) -> impl Fn(ffmpeg::Error) -> Error + Copy {
            move |e| Error::Unsupported(format!("cannot {what} the audio: {e}"))
        }
        let decoder = codec::context::Context::from_parameters(ist.parameters())
            .and_then(|c| c.decoder().audio())
            .map_err(err("decode"))?;
        let codec = encoder::find_by_name("libopus")
            .or_else(|| encoder::find(codec::Id::OPUS))
            .ok_or_else(|| Error::Unsupported("this ffmpeg has no Opus encoder for a WebM's audio".into()))?;
        let stereo = decoder.channels() >= 2;
        let layout = if stereo { ffmpeg::ChannelLayout::STEREO } else { ffmpeg::ChannelLayout::MONO };
        let mut enc = codec::context::Context::new_with_codec(codec).encoder().audio().map_err(err("encode"))?;
        enc.set_rate(OPUS_RATE);
        enc.set_format(format::Sample::F32(format::sample::Type::Packed));
        enc.set_channel_layout(layout);
        enc.set_time_base(ffmpeg::Rational::new(1, OPUS_RATE));
        enc.set_bit_rate(if stereo { 128_000 } else { 64_000 });
        if octx.format().flags().contains(format::Flags::GLOBAL_HEADER) {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut dict = Dictionary::new();
        dict.set("strict", "experimental"); // ffmpeg's own Opus encoder, where libopus is absent
        let encoder = enc.open_with(dict).map_err(err("encode"))?;
        let mut ost = octx.add_stream(codec).map_err(err("add"))?;
        ost.set_parameters(&encoder);
        ost.set_time_base(ffmpeg::Rational::new(1, OPUS_RATE));
        let out_index = ost.index();
        // The graph: the decoder's samples in, 48 kHz packed float out, in frames of the
        // encoder's size (the last one shorter).
        let mut graph = filter::Graph::new();
        let tb = ist.time_base();
        let in_layout = match decoder.channel_layout().bits() {
            0 => ffmpeg::ChannelLayout::default(decoder.channels() as i32).bits(),
            bits => bits,
        };
        let args = format!(
            "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{in_layout:x}",
            tb.numerator(),
            tb.denominator(),
            decoder.rate(),
            decoder.format().name()
        );
        let e = err("resample");
        graph.add(&filter::find("abuffer").expect("abuffer filter"), "in", &args).map_err(e)?;
        graph.add(&filter::find("abuffersink").expect("abuffersink filter"), "out", "").map_err(e)?;
        let spec = format!(
            "aresample={OPUS_RATE},aformat=sample_fmts=flt:channel_layouts={}",
            if stereo { "stereo" } else { "mono" }
        );
        graph.output("in", 0).and_then(|p| p.input("out", 0)).and_then(|p| p.parse(&spec)).map_err(e)?;
        graph.validate().map_err(e)?;
        graph.get("out").expect("sink").sink().set_frame_size(encoder.frame_size());
        Ok((Transcode { decoder, graph, encoder, samples: None }, out_index))
    }

    /// Decodes one source packet (or, with `None`, flushes everything) and writes what the
    /// encoder gives back.
    fn packet(
        &mut self,
        packet: Option<&Packet>,
        octx: &mut format::context::Output,
        out_index: usize,
        out_tb: ffmpeg::Rational,
    ) -> Result<()> {
        let err = |e: ffmpeg::Error| Error::Unsupported(format!("cannot re-encode the audio: {e}"));
        match packet {
            // A damaged packet is skipped rather than failing the render (the samples after
            // it then close up by its length, a few milliseconds).
            Some(p) => {
                let _ = self.decoder.send_packet(p);
            }
            None => {
                let _ = self.decoder.send_eof();
            }
        }
        let mut decoded = ffmpeg::frame::Audio::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            self.graph.get("in").expect("source").source().add(&decoded).map_err(err)?;
        }
        if packet.is_none() {
            self.graph.get("in").expect("source").source().flush().map_err(err)?;
        }
        let mut resampled = ffmpeg::frame::Audio::empty();
        while self.graph.get("out").expect("sink").sink().frame(&mut resampled).is_ok() {
            let at = self.samples.unwrap_or(0);
            resampled.set_pts(Some(at));
            self.samples = Some(at + resampled.samples() as i64);
            self.encoder.send_frame(&resampled).map_err(err)?;
            self.write(octx, out_index, out_tb)?;
        }
        if packet.is_none() {
            self.encoder.send_eof().map_err(err)?;
            self.write(octx, out_index, out_tb)?;
        }
        Ok(())
    }

    fn write(&mut self, octx: &mut format::context::Output, out_index: usize, out_tb: ffmpeg::Rational) -> Result<()> {
        let mut encoded = Packet::empty();
        while self.encoder.receive_packet(&mut encoded).is_ok() {
            encoded.set_stream(out_index);
            encoded.rescale_ts(ffmpeg::Rational::new(1, OPUS_RATE), out_tb);
            encoded.write_interleaved(octx).map_err(|e| Error::Unsupported(format!("cannot write the audio: {e}")))?;
        }
        Ok(())
    }
}

impl AudioCopy {
    /// Copies packets until the audio reaches `until_seconds` (all of it when `None`).
    fn copy_until(
        &mut self,
        octx: &mut format::context::Output,
        out_tb: ffmpeg::Rational,
        until_seconds: Option<f64>,
    ) -> Result<()> {
        let tb = self.in_tb.numerator() as f64 / self.in_tb.denominator() as f64;
        while !self.done {
            let mut packet = Packet::empty();
            match packet.read(&mut self.ictx) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => {
                    self.done = true;
                    break;
                }
                Err(_) => continue,
            }
            if packet.stream() != self.in_index {
                continue;
            }
            let pts = packet.pts().unwrap_or(0);
            if pts < self.start_ts {
                continue;
            }
            if self.end_ts.is_some_and(|e| pts >= e) {
                self.done = true;
                break;
            }
            match &mut self.transcode {
                Some(t) => {
                    if t.samples.is_none() {
                        let late = (pts - self.start_ts) as f64 * tb;
                        t.samples = Some((late * OPUS_RATE as f64).round().max(0.0) as i64);
                    }
                    t.packet(Some(&packet), octx, self.out_index, out_tb)?;
                }
                None => {
                    packet.set_pts(Some(pts - self.start_ts));
                    packet.set_dts(packet.dts().map(|d| d - self.start_ts));
                    packet.rescale_ts(self.in_tb, out_tb);
                    packet.set_position(-1);
                    packet.set_stream(self.out_index);
                    packet
                        .write_interleaved(octx)
                        .map_err(|e| Error::Unsupported(format!("cannot copy audio: {e}")))?;
                }
            }
            if until_seconds.is_some_and(|u| (pts - self.start_ts) as f64 * tb > u) {
                break;
            }
        }
        Ok(())
    }
}

pub struct Encoded {
    kind: SinkKind,
    dest: PathBuf,
    octx: format::context::Output,
    encoder: encoder::Video,
    enc_tb: ffmpeg::Rational,
    out_tb: ffmpeg::Rational,
    /// Source time base (seconds per pts tick of `write`).
    src_tb: Rational,
    width: u32,
    height: u32,
    scaler: Option<scaling::Context>,
    graph: Option<filter::Graph>,
    audio: Option<AudioCopy>,
    audio_tb: ffmpeg::Rational,
    last_pts: Option<i64>,
    /// The file being written; declared last so it is removed (when never committed) only
    /// after the ffmpeg contexts above have closed it.
    staged: Option<crate::io::Staged>,
}

pub fn open(
    kind: SinkKind,
    dest: &Path,
    format: &FrameFormat,
    opts: &SinkOptions,
    audio_from: Option<&AudioSource>,
) -> Result<Box<dyn FrameSink>> {
    crate::media::init_ffmpeg()?;
    let &FrameFormat { width, height, rate, time_base } = format;
    let (fmt, codec_name) = match kind {
        SinkKind::Mp4 => (
            match dest.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
                Some("mov") => "mov",
                Some("mkv") => "matroska",
                _ => "mp4",
            },
            "libx264",
        ),
        SinkKind::WebM => ("webm", "libvpx-vp9"),
        SinkKind::Gif => ("gif", "gif"),
        SinkKind::Png => unreachable!("PNG sequences are not encoded"),
    };
    let staged = crate::io::Staged::new(dest);
    let mut octx = format::output_as(&crate::media::ffmpeg_path(staged.path()), fmt)
        .map_err(|e| Error::Output { path: dest.to_owned(), reason: format!("cannot create the output: {e}") })?;
    let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
    let codec = encoder::find_by_name(codec_name)
        .ok_or_else(|| Error::Unsupported(format!("this ffmpeg has no {codec_name} encoder")))?;
    // yuv420p needs even sizes; GIF takes any.
    let (ew, eh) = match kind {
        SinkKind::Gif => (width, height),
        _ => (width + width % 2, height + height % 2),
    };
    let enc_tb = match kind {
        SinkKind::Gif => ffmpeg::Rational::new(1, 100),
        _ => rational(time_base),
    };
    let mut ost = octx.add_stream(codec).map_err(ff(dest, "cannot add the video stream"))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(ff(dest, "cannot set up the encoder"))?;
    enc.set_width(ew);
    enc.set_height(eh);
    enc.set_format(if kind == SinkKind::Gif { format::Pixel::PAL8 } else { format::Pixel::YUV420P });
    enc.set_time_base(enc_tb);
    enc.set_frame_rate(Some(rational(rate)));
    if global_header {
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut dict = Dictionary::new();
    match kind {
        SinkKind::Mp4 => {
            dict.set("crf", &opts.crf.to_string());
            dict.set("preset", &opts.preset);
        }
        SinkKind::WebM => {
            dict.set("crf", &opts.crf.to_string());
            dict.set("b", "0");
            dict.set("deadline", "good");
            dict.set("cpu-used", "4");
        }
        _ => {}
    }
    let encoder = enc.open_with(dict).map_err(ff(dest, "cannot open the encoder"))?;
    ost.set_parameters(&encoder);
    ost.set_time_base(enc_tb);
    let mut audio = None;
    if let (SinkKind::Mp4 | SinkKind::WebM, Some(src)) = (kind, audio_from) {
        audio = audio_copy(&mut octx, src, kind)?;
    }
    let mut header = Dictionary::new();
    if kind == SinkKind::Gif {
        header.set("loop", "0"); // loop forever
    }
    octx.write_header_with(header).map_err(ff(dest, "cannot write the header"))?;
    let out_tb = octx.stream(0).expect("video stream").time_base();
    let audio_tb =
        audio.as_ref().map(|a| octx.stream(a.out_index).expect("audio stream").time_base()).unwrap_or(out_tb);
    let graph = match kind {
        SinkKind::Gif => Some(gif_graph(dest, width, height)?),
        _ => None,
    };
    Ok(Box::new(Encoded {
        kind,
        dest: dest.to_owned(),
        octx,
        encoder,
        enc_tb,
        out_tb,
        src_tb: time_base,
        width,
        height,
        scaler: None,
        graph,
        audio,
        audio_tb,
        last_pts: None,
        staged: Some(staged),
    }))
}

/// The source's audio for the output: copied, or re-encoded as Opus where the container
/// cannot hold it (a WebM's unless it is Opus or Vorbis already; PCM in an MP4, say a WAV
/// given to a zoom).
fn audio_copy(octx: &mut format::context::Output, src: &AudioSource, kind: SinkKind) -> Result<Option<AudioCopy>> {
    let mut ictx = format::input(&crate::media::ffmpeg_path(&src.path))
        .map_err(|e| Error::Video { path: src.path.clone(), reason: format!("cannot reopen for audio ({e})") })?;
    let Some(ist) = ictx.streams().best(media::Type::Audio) else { return Ok(None) };
    let (in_index, in_tb) = (ist.index(), ist.time_base());
    let webm_ready = matches!(ist.parameters().id(), codec::Id::OPUS | codec::Id::VORBIS);
    // SAFETY: asks the output format, which this context owns, about a codec id; no memory
    // changes hands.
    // 1 yes, 0 no, below 0 cannot tell (then copied, as before).
    let fits =
        unsafe { ffmpeg::ffi::avformat_query_codec(octx.format().as_ptr(), ist.parameters().id().into(), 0) != 0 };
    let (transcode, out_index) = if (kind == SinkKind::WebM && !webm_ready) || !fits {
        let (t, index) = Transcode::new(octx, &ist)?;
        (Some(t), index)
    } else {
        let mut ost = octx
            .add_stream(encoder::find(codec::Id::None))
            .map_err(|e| Error::Unsupported(format!("cannot add the audio stream: {e}")))?;
        ost.set_parameters(ist.parameters());
        // SAFETY: plain field write on parameters this stream owns; a tag from another
        // container may be invalid in this one, and 0 lets the muxer choose.
        unsafe {
            (*ost.parameters().as_mut_ptr()).codec_tag = 0;
        }
        (None, ost.index())
    };
    let tb = in_tb.numerator() as f64 / in_tb.denominator() as f64;
    let start_ts = (src.start / tb).round() as i64;
    if src.start > 0.0 {
        let t = (src.start * ffmpeg::ffi::AV_TIME_BASE as f64) as i64;
        let _ = ictx.seek(t, ..t);
    }
    let end_ts = src.duration.map(|d| ((src.start + d) / tb).round() as i64);
    Ok(Some(AudioCopy { ictx, in_index, out_index, in_tb, start_ts, end_ts, done: false, transcode }))
}

fn gif_graph(dest: &Path, w: u32, h: u32) -> Result<filter::Graph> {
    let e = ff(dest, "cannot build the GIF palette filter");
    let mut graph = filter::Graph::new();
    let args = format!("video_size={w}x{h}:pix_fmt=rgb24:time_base=1/100:pixel_aspect=1/1");
    graph.add(&filter::find("buffer").expect("buffer filter"), "in", &args).map_err(&e)?;
    graph.add(&filter::find("buffersink").expect("buffersink filter"), "out", "").map_err(&e)?;
    graph.get("out").expect("sink").set_pixel_format(format::Pixel::PAL8);
    graph
        .output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| p.parse("split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=sierra2_4a"))
        .map_err(&e)?;
    graph.validate().map_err(&e)?;
    Ok(graph)
}

impl Encoded {
    /// The RGB frame, padded by repeating the last row and column up to the encoder's size.
    fn rgb_frame(&self, img: &RgbImage, pts: i64) -> Video {
        let (ew, eh) = (self.encoder.width(), self.encoder.height());
        let mut f = Video::new(format::Pixel::RGB24, ew, eh);
        let stride = f.stride(0);
        let data = f.data_mut(0);
        let (w, h) = (self.width as usize, self.height as usize);
        let raw = img.as_raw();
        for y in 0..eh as usize {
            let src = &raw[y.min(h - 1) * w * 3..][..w * 3];
            let row = &mut data[y * stride..y * stride + ew as usize * 3];
            row[..w * 3].copy_from_slice(src);
            for x in w..ew as usize {
                row[x * 3..x * 3 + 3].copy_from_slice(&src[(w - 1) * 3..w * 3]);
            }
        }
        f.set_pts(Some(pts));
        f
    }

    fn drain_packets(&mut self) -> Result<()> {
        let mut packet = Packet::empty();
        // One nominal frame, so the last frame keeps its duration in the container.
        let frame_ticks = match Some(self.encoder.frame_rate()) {
            Some(r) if r.numerator() > 0 && r.denominator() > 0 => ((self.enc_tb.denominator() as i64
                * r.denominator() as i64) as f64
                / (self.enc_tb.numerator() as i64 * r.numerator() as i64) as f64)
                .round() as i64,
            _ => 0,
        };
        while self.encoder.receive_packet(&mut packet).is_ok() {
            if packet.duration() == 0 {
                packet.set_duration(frame_ticks);
            }
            packet.set_stream(0);
            packet.rescale_ts(self.enc_tb, self.out_tb);
            packet.write_interleaved(&mut self.octx).map_err(ff(&self.dest, "cannot write a frame"))?;
        }
        Ok(())
    }

    fn encode(&mut self, frame: Option<&Video>) -> Result<()> {
        match frame {
            Some(f) => self.encoder.send_frame(f).map_err(ff(&self.dest, "cannot encode a frame"))?,
            None => self.encoder.send_eof().map_err(ff(&self.dest, "cannot flush the encoder"))?,
        }
        self.drain_packets()
    }

    fn drain_graph(&mut self) -> Result<()> {
        let mut filtered = Video::empty();
        loop {
            let got = self.graph.as_mut().expect("gif graph").get("out").expect("sink").sink().frame(&mut filtered);
            if got.is_err() {
                return Ok(());
            }
            self.encode(Some(&filtered))?;
        }
    }
}

impl FrameSink for Encoded {
    fn write(&mut self, img: &RgbImage, pts: i64) -> Result<()> {
        if img.dimensions() != (self.width, self.height) {
            let (w, h) = img.dimensions();
            return Err(Error::internal(format!("a {w}x{h} frame for a {}x{} output", self.width, self.height)));
        }
        // Encoder timestamps must increase: GIF ticks are 1/100 s.
        let mut enc_pts = match self.kind {
            SinkKind::Gif => (pts as f64 * self.src_tb.as_f64() * 100.0).round() as i64,
            _ => pts,
        };
        if let Some(last) = self.last_pts.filter(|&l| enc_pts <= l) {
            enc_pts = last + 1;
        }
        self.last_pts = Some(enc_pts);
        let frame = self.rgb_frame(img, enc_pts);
        if self.graph.is_some() {
            self.graph
                .as_mut()
                .unwrap()
                .get("in")
                .expect("source")
                .source()
                .add(&frame)
                .map_err(ff(&self.dest, "GIF filter"))?;
            return self.drain_graph();
        }
        let sc = match &mut self.scaler {
            Some(s) => s,
            None => self.scaler.insert(
                scaling::Context::get(
                    format::Pixel::RGB24,
                    frame.width(),
                    frame.height(),
                    format::Pixel::YUV420P,
                    frame.width(),
                    frame.height(),
                    scaling::Flags::BICUBIC,
                )
                .map_err(ff(&self.dest, "cannot convert frames"))?,
            ),
        };
        let mut yuv = Video::empty();
        sc.run(&frame, &mut yuv).map_err(ff(&self.dest, "cannot convert a frame"))?;
        yuv.set_pts(Some(enc_pts));
        self.encode(Some(&yuv))?;
        let now = pts as f64 * self.src_tb.as_f64();
        let (out_tb, dest) = (self.audio_tb, self.dest.clone());
        if let Some(a) = &mut self.audio {
            a.copy_until(&mut self.octx, out_tb, Some(now))
                .map_err(|e| Error::Write { path: dest, reason: e.to_string() })?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let result = (|| -> Result<()> {
            if self.graph.is_some() {
                self.graph
                    .as_mut()
                    .unwrap()
                    .get("in")
                    .expect("source")
                    .source()
                    .flush()
                    .map_err(ff(&self.dest, "GIF filter"))?;
                self.drain_graph()?;
            }
            self.encode(None)?;
            let out_tb = self.audio_tb;
            if let Some(a) = &mut self.audio {
                // The rest of the audio, up to the end of the video.
                let end = self.last_pts.map(|p| (p + 1) as f64 * self.src_tb.as_f64());
                a.copy_until(&mut self.octx, out_tb, end)?;
                if let Some(t) = &mut a.transcode {
                    t.packet(None, &mut self.octx, a.out_index, out_tb)?;
                }
            }
            self.octx.write_trailer().map_err(ff(&self.dest, "cannot finish the file"))?;
            Ok(())
        })();
        result?;
        self.staged.take().expect("staged until finished").commit()
    }
}
