//! Progress on stderr: a bar on a terminal, plain lines otherwise. Every display also carries
//! the Ctrl-C flag: its answer to the library's progress call is what stops a job.

use super::Cancel;
use deepdream::dream::{DreamParams, Progress, StepInfo, octave_shapes};
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

/// A duration as people read it: "42 s", "3 min 20 s", "1 h 05 min".
pub fn human(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// How often the plain-line mode (no terminal: a log, CI, a pipe) reports.
const LINE_EVERY: f64 = 2.0;

/// The pixel-steps of each octave of one dream of an `h` x `w` image, smallest first.
fn octave_work(params: &DreamParams, (h, w): (usize, usize)) -> Vec<f64> {
    octave_shapes(h, w, params.octaves, params.octave_scale).iter().map(|&(h, w)| (h * w) as f64).collect()
}

/// The pixel-steps left in a dream after step `i` (the work of the rest of its octave and of
/// the octaves above it).
fn work_left(octaves: &[f64], steps: usize, i: &StepInfo) -> f64 {
    let here = octaves.get(i.octave).copied().unwrap_or((i.height * i.width) as f64);
    let above: f64 = octaves.iter().skip(i.octave + 1).sum();
    here * (steps - (i.step + 1).min(steps)) as f64 + above * steps as f64
}

/// Ascent steps of one still dream. The bar advances by each step's pixels, so its ETA is
/// right although later octaves take longer (an octave 1.4 times larger takes twice as long).
pub struct StepBar<'a> {
    bar: Option<ProgressBar>,
    cancel: &'a Cancel,
    octaves: Vec<f64>,
    steps: usize,
    total_steps: usize,
    done: usize,
    work_done: f64,
    start: Instant,
    last_line: Instant,
    /// The last loss read back (on a GPU, every few steps only).
    loss: Option<f32>,
}

/// Where reading the loss stalls the device (a GPU), the bar reads it this often.
const LOSS_EVERY: usize = 10;

impl<'a> StepBar<'a> {
    pub fn new(params: &DreamParams, size: (usize, usize), cancel: &'a Cancel) -> Self {
        let octaves = octave_work(params, size);
        let total: f64 = octaves.iter().sum::<f64>() * params.steps as f64;
        let template = "{spinner} [{elapsed_precise}] {bar:30} {msg}, ETA {eta}";
        cancel.arm();
        let now = Instant::now();
        StepBar {
            bar: bar(total as u64, template),
            cancel,
            total_steps: octaves.len() * params.steps,
            octaves,
            steps: params.steps,
            done: 0,
            work_done: 0.0,
            start: now,
            last_line: now,
            loss: None,
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for StepBar<'_> {
    fn loss_every(&self) -> usize {
        LOSS_EVERY
    }

    fn step(&mut self, i: &StepInfo) -> bool {
        self.done += 1;
        let work = (i.height * i.width) as f64;
        self.work_done += work;
        self.loss = i.loss.or(self.loss);
        let msg = format!(
            "step {}/{}, octave {}/{} ({}x{}){}",
            self.done,
            self.total_steps,
            i.octave + 1,
            i.octaves,
            i.width,
            i.height,
            self.loss.map(|l| format!(", loss {l:.3}")).unwrap_or_default()
        );
        match &self.bar {
            Some(bar) => {
                bar.inc(work as u64);
                bar.set_message(msg);
            }
            None => {
                let last = self.done == self.total_steps;
                if last || self.last_line.elapsed().as_secs_f64() >= LINE_EVERY {
                    self.last_line = Instant::now();
                    let rate = self.start.elapsed().as_secs_f64() / self.work_done;
                    let eta = work_left(&self.octaves, self.steps, i) * rate;
                    tell!("{msg}, ETA {}", human(eta));
                }
            }
        }
        !self.cancel.raised()
    }
}

/// Frames of a render. Its rate and ETA count only the frames dreamed in this run (not those
/// a resume took from the store), and leave out the first one, which gets the full octave
/// dream where the others get a light one; within a frame (the first of a zoom takes minutes
/// at 4K) the steps show, and the ETA weighs them by pixels.
pub struct FrameBar<'a> {
    bar: Option<ProgressBar>,
    /// The frames the job renders (a video's range, not its length), when known.
    total: Option<u64>,
    cancel: &'a Cancel,
    /// Pixel-steps of each octave of a first frame and of a continuing one, and their steps.
    first: (Vec<f64>, usize),
    rest: (Vec<f64>, usize),
    /// The run's first frame gets the full dream (not after a resume, which continues).
    full_first: bool,
    /// Frames dreamed in this run; since when, and from which of them, continuing frames
    /// are timed.
    fresh: u64,
    timed_from: Option<(Instant, u64)>,
    /// The frame being dreamed: when it began, and its pixel-steps so far.
    frame_start: Instant,
    frame_work: f64,
    done: u64,
    last_line: Instant,
}

impl<'a> FrameBar<'a> {
    pub fn new(
        total: Option<u64>,
        first: &DreamParams,
        rest: &DreamParams,
        size: (usize, usize),
        cancel: &'a Cancel,
    ) -> Self {
        let template = "[{elapsed_precise}] {bar:30} {pos}/{len} frames{msg}";
        cancel.arm();
        let now = Instant::now();
        FrameBar {
            bar: bar(total.unwrap_or(0), template),
            total,
            cancel,
            first: (octave_work(first, size), first.steps),
            rest: (octave_work(rest, size), rest.steps),
            full_first: true,
            fresh: 0,
            timed_from: None,
            frame_start: now,
            frame_work: 0.0,
            done: 0,
            last_line: now,
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// Seconds per frame after the run's first, from the first frame's end to the last
    /// frame's: the steady rate of a render, once a second frame is done.
    pub fn later_frames(&self) -> Option<f64> {
        match self.timed_from {
            Some((since, from)) if self.fresh > from => {
                Some(self.frame_start.duration_since(since).as_secs_f64() / (self.fresh - from) as f64)
            }
            _ => None,
        }
    }

    /// Seconds per continuing frame: measured once one is done, else from the rate of the
    /// steps so far.
    fn per_frame(&self) -> Option<f64> {
        match self.timed_from {
            Some((since, from)) if self.fresh > from => {
                Some(since.elapsed().as_secs_f64() / (self.fresh - from) as f64)
            }
            _ => {
                let rate = self.frame_start.elapsed().as_secs_f64() / self.frame_work.max(1.0);
                (self.frame_work > 0.0).then(|| rate * self.rest.0.iter().sum::<f64>() * self.rest.1 as f64)
            }
        }
    }

    /// The rate and ETA part of a line, once there is anything to measure: `in_frame` holds
    /// the seconds left of a frame being dreamed (none between frames).
    fn timing(&self, in_frame: Option<f64>) -> String {
        let Some(per) = self.per_frame().filter(|p| *p > 0.0) else { return String::new() };
        let rate = if per >= 1.0 { format!("{per:.1} s/frame") } else { format!("{:.1} frames/s", 1.0 / per) };
        let eta = self.total.map(|t| {
            let after = t.saturating_sub(self.done + u64::from(in_frame.is_some())) as f64;
            format!(", ETA {}", human(in_frame.unwrap_or(0.0) + after * per))
        });
        format!(", {rate}{}", eta.unwrap_or_default())
    }
}

impl FrameProgress for FrameBar<'_> {
    fn step(&mut self, i: &StepInfo) -> bool {
        self.frame_work += (i.height * i.width) as f64;
        let full = self.fresh == 0 && self.full_first;
        let (octaves, steps) = if full { &self.first } else { &self.rest };
        let rate = self.frame_start.elapsed().as_secs_f64() / self.frame_work;
        let left = work_left(octaves, *steps, i) * rate;
        let here =
            format!("frame {}: octave {}/{}, step {}/{}", self.done + 1, i.octave + 1, i.octaves, i.step + 1, i.steps);
        match &self.bar {
            Some(b) => b.set_message(format!(" ({here}){}", self.timing(Some(left)))),
            None if self.last_line.elapsed().as_secs_f64() >= LINE_EVERY * 2.5 => {
                self.last_line = Instant::now();
                tell!("{here}{}", self.timing(Some(left)));
            }
            None => {}
        }
        !self.cancel.raised()
    }

    fn frame(&mut self, done: u64, source_total: Option<u64>) -> bool {
        self.total = self.total.or(source_total);
        self.done = done;
        self.fresh += 1;
        if self.timed_from.is_none() {
            // Continuing frames are timed from the end of the run's first frame: the full
            // dream of a first frame, or after a resume the one that waited for the stored
            // frames to be encoded again, would both skew the rate.
            self.timed_from = Some((Instant::now(), 1));
        }
        self.frame_start = Instant::now();
        self.frame_work = 0.0;
        let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        let timing = self.timing(None);
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(timing);
            }
            None => {
                let last = Some(done) == self.total;
                if last || self.fresh == 1 || self.last_line.elapsed().as_secs_f64() >= LINE_EVERY {
                    self.last_line = Instant::now();
                    tell!("frame {done}{of}{timing}");
                }
            }
        }
        !self.cancel.raised()
    }

    fn resumed(&mut self, frames: u64) {
        self.full_first = false;
        self.frame_start = Instant::now();
        self.done = frames;
        match &self.bar {
            Some(b) => b.set_position(frames),
            None => tell!("resuming after frame {frames}"),
        }
    }

    fn finishing(&mut self) {
        match &self.bar {
            Some(b) => {
                b.set_message(" (finishing the output: encoding)");
                b.enable_steady_tick(std::time::Duration::from_millis(200));
            }
            None => tell!("finishing the output (encoding)"),
        }
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
