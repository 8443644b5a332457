//! The loudness of an audio track, frame by frame, for settings that follow the music: the
//! track decoded by ffmpeg, mixed to mono at 8 kHz (ffmpeg's `aresample` and `aformat`), and the
//! root mean square of the samples each video frame spans.

use crate::{Error, Result};
use ffmpeg::{codec, filter, format, media};
use ffmpeg_next as ffmpeg;
use std::path::Path;

/// Samples per second of the mono mix (loudness needs no more).
const RATE: i32 = 8000;

/// The RMS loudness (full scale 1) of each of `frames` frames at `fps`, the first starting
/// `start` seconds into `path`'s audio track. Frames past the track's end are silent.
pub fn loudness(path: &Path, start: f64, fps: f64, frames: u64) -> Result<Vec<f64>> {
    let err = |reason: String| Error::Video { path: path.to_owned(), reason };
    crate::media::init_ffmpeg()?;
    let mut ictx = format::input(&crate::media::ffmpeg_path(path))
        .map_err(|e| err(format!("not a readable audio or video file ({e})")))?;
    let stream = ictx.streams().best(media::Type::Audio).ok_or_else(|| err("has no audio track".into()))?;
    let index = stream.index();
    let tb = stream.time_base();
    let stream_start = match stream.start_time() {
        t if t != ffmpeg::ffi::AV_NOPTS_VALUE => t as f64 * f64::from(tb),
        _ => 0.0,
    };
    let mut decoder = codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().audio())
        .map_err(|e| err(format!("cannot decode its audio ({e})")))?;
    let layout = match decoder.channel_layout().bits() {
        0 => ffmpeg::ChannelLayout::default(decoder.channels() as i32).bits(),
        bits => bits,
    };
    let args = format!(
        "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{layout:x}",
        tb.numerator(),
        tb.denominator(),
        decoder.rate(),
        decoder.format().name()
    );
    let mut graph = filter::Graph::new();
    let graph_err =
        |e: ffmpeg::Error| Error::Video { path: path.to_owned(), reason: format!("cannot mix its audio ({e})") };
    graph.add(&filter::find("abuffer").expect("abuffer filter"), "in", &args).map_err(graph_err)?;
    graph.add(&filter::find("abuffersink").expect("abuffersink filter"), "out", "").map_err(graph_err)?;
    graph
        .output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| p.parse(&format!("aresample={RATE},aformat=sample_fmts=flt:channel_layouts=mono")))
        .map_err(graph_err)?;
    graph.validate().map_err(graph_err)?;
    let mut samples: Vec<f32> = Vec::new();
    let mut decoded = ffmpeg::frame::Audio::empty();
    let mut mixed = ffmpeg::frame::Audio::empty();
    let mut pull = |graph: &mut filter::Graph, samples: &mut Vec<f32>| {
        while graph.get("out").expect("sink").sink().frame(&mut mixed).is_ok() {
            let n = mixed.samples();
            let data = mixed.data(0);
            samples.extend(data[..n * 4].chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])));
        }
    };
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            continue; // a damaged packet: skipped, as ffmpeg does
        }
        while decoder.receive_frame(&mut decoded).is_ok() {
            graph.get("in").expect("source").source().add(&decoded).map_err(graph_err)?;
        }
        pull(&mut graph, &mut samples);
    }
    let _ = decoder.send_eof();
    while decoder.receive_frame(&mut decoded).is_ok() {
        graph.get("in").expect("source").source().add(&decoded).map_err(graph_err)?;
    }
    graph.get("in").expect("source").source().flush().map_err(graph_err)?;
    pull(&mut graph, &mut samples);
    // Frame k spans [start + k / fps, start + (k + 1) / fps) of the file's time.
    let at = |seconds: f64| (((seconds - stream_start) * RATE as f64).round().max(0.0) as usize).min(samples.len());
    Ok((0..frames)
        .map(|k| {
            let (a, b) = (at(start + k as f64 / fps), at(start + (k + 1) as f64 / fps));
            match b > a {
                true => (samples[a..b].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (b - a) as f64).sqrt(),
                false => 0.0,
            }
        })
        .collect())
}
