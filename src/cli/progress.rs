//! Progress on stderr: a bar on a terminal, plain lines otherwise. Every display also carries
//! the Ctrl-C flag: its answer to the library's progress call is what stops a job.

use super::Cancel;
use deepdream::dream::{Progress, StepInfo};
use deepdream::pipeline::FrameProgress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// A bar on a terminal (none otherwise), with `template`.
fn bar(total: u64, template: &str) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(total);
        b.set_style(ProgressStyle::with_template(template).expect("valid template"));
        b
    })
}

/// Ascent steps of one still dream.
pub struct StepBar<'a> {
    bar: Option<ProgressBar>,
    cancel: &'a Cancel,
}

impl<'a> StepBar<'a> {
    pub fn new(total: u64, cancel: &'a Cancel) -> Self {
        let template = "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps, ETA {eta} {msg}";
        cancel.arm();
        StepBar { bar: bar(total, template), cancel }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for StepBar<'_> {
    fn step(&mut self, i: &StepInfo) -> bool {
        let msg = format!("octave {}/{} ({}x{}) loss {:.3}", i.octave + 1, i.octaves, i.width, i.height, i.loss);
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(msg);
            }
            None => tell!("step {}/{}, {msg}", i.step + 1, i.steps),
        }
        !self.cancel.raised()
    }
}

/// Frames of a render, with fps and ETA.
pub struct FrameBar<'a> {
    bar: Option<ProgressBar>,
    /// The frames the job renders (a video's range, not its length), when known.
    total: Option<u64>,
    start: Instant,
    cancel: &'a Cancel,
}

impl<'a> FrameBar<'a> {
    pub fn new(total: Option<u64>, cancel: &'a Cancel) -> Self {
        let template = "[{elapsed_precise}] {bar:30} {pos}/{len} frames, {per_sec}, ETA {eta}";
        cancel.arm();
        FrameBar { bar: bar(total.unwrap_or(0), template), total, start: Instant::now(), cancel }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl FrameProgress for FrameBar<'_> {
    fn step(&mut self, _: &StepInfo) -> bool {
        !self.cancel.raised()
    }

    fn frame(&mut self, done: u64, source_total: Option<u64>) -> bool {
        let total = self.total.or(source_total);
        match &self.bar {
            Some(b) => b.set_position(done),
            None => {
                let secs = self.start.elapsed().as_secs_f64();
                let fps = done as f64 / secs.max(1e-9);
                let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                let eta = total.map(|t| format!(", ETA {:.0} s", t.saturating_sub(done) as f64 / fps.max(1e-9)));
                let per_frame = secs / done as f64;
                tell!("frame {done}{of} ({fps:.2} frames/s, {per_frame:.2} s/frame{})", eta.unwrap_or_default());
            }
        }
        !self.cancel.raised()
    }
}

/// Bytes of a download.
pub struct DownloadBar {
    bar: Option<ProgressBar>,
    last_line: u64,
}

impl DownloadBar {
    pub fn new() -> Self {
        DownloadBar { bar: bar(0, "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"), last_line: 0 }
    }

    pub fn update(&mut self, done: u64, total: Option<u64>) {
        match &self.bar {
            Some(b) => {
                b.set_length(total.unwrap_or(done));
                b.set_position(done);
            }
            None if done >= self.last_line + (8 << 20) || Some(done) == total => {
                self.last_line = done;
                let of = total.map(|t| format!(" of {} MB", t >> 20)).unwrap_or_default();
                tell!("downloaded {} MB{of}", done >> 20);
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
