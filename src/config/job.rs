//! The immutable, validated, serialisable [`Job`] of one command and its plans (still, zoom,
//! video): the dream settings from [`super::settings`], plus the zoom, video and encoder
//! settings, each resolved flag over preset over default and checked once where it was written.

use super::flags::{DreamFlags, EncodeFlags, VideoFlags, ZoomFlags};
use super::origin::{Origin, Rule, Sourced};
use super::parse::{parse_pan, parse_rate};
use super::preset::{DEFAULT_PRESET, PresetFile, VIDEO_PRESET, ZOOM_PRESET};
use super::settings::{Settings, flag, optional, pick, pick_with};
use crate::device::DeviceSpec;
use crate::dream::animation::{Animation, Target};
use crate::dream::timeline::{AudioFollow, Timeline};
use crate::dream::{DreamParams, ZoomTransform};
use crate::media::Rational;
use crate::sink::SinkOptions;
use crate::source::motion::Continuation;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A path as text (any bytes that are not UTF-8 replaced), so every job serialises.
fn lossy_path<S: serde::Serializer>(path: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn lossy_path_opt<S: serde::Serializer>(path: &Option<PathBuf>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match path {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// One command's work, fully resolved and checked: nothing in it can fail a range check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Job {
    pub model: String,
    pub device: DeviceSpec,
    #[serde(serialize_with = "lossy_path")]
    pub input: PathBuf,
    #[serde(serialize_with = "lossy_path")]
    pub output: PathBuf,
    /// The input is shrunk so its longer side is at most this.
    pub max_size: Option<u32>,
    pub work: Work,
    /// Continue an interrupted render (not part of what is rendered: a resume must match).
    #[serde(skip)]
    pub resume: bool,
    /// Each layer the objective names, with where it was named (the checks against the
    /// network report it there).
    #[serde(skip)]
    pub layers: Vec<(String, super::origin::Origin)>,
    /// The octave count was given with --octaves: [`Job::fit_octaves`] leaves it alone.
    #[serde(skip)]
    pub octaves_given: bool,
    /// Flags given that change nothing in this job, to be told to the user.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The longer side the presets' octave counts are tuned for (the README's examples are 450 to
/// 640 pixels): a larger picture gets more octaves ([`Job::fit_octaves`]).
pub const OCTAVE_REFERENCE_SIDE: f64 = 640.0;

#[derive(Clone, Debug, serde::Serialize)]
pub enum Work {
    /// One still image.
    Still {
        params: Box<DreamParams>,
    },
    Zoom(Box<ZoomPlan>),
    Video(Box<VideoPlan>),
}

/// A fractal zoom: the first frame gets `params`, every later frame `frame_params` on the
/// previous dreamed frame moved by `transform`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ZoomPlan {
    pub params: DreamParams,
    pub frame_params: DreamParams,
    pub frames: u64,
    pub rate: Rational,
    pub transform: ZoomTransform,
    pub encoder: SinkOptions,
    /// A seamless loop: this many extra frames are rendered and the last ones cross-fade into
    /// the first (0: no loop).
    pub loop_frames: u64,
    /// Keyframed settings as written, and as read (by [`Job::animate`]).
    pub timelines: Vec<TimelineSpec>,
    pub animation: Animation,
    /// A sound track to follow and to carry into the output.
    #[serde(serialize_with = "lossy_path_opt")]
    pub audio: Option<PathBuf>,
}

impl ZoomPlan {
    /// The frames dreamed: the output's, and a loop's fade beyond them.
    pub fn rendered_frames(&self) -> u64 {
        self.frames + self.loop_frames
    }
}

/// A dreamed video.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VideoPlan {
    /// The dream of a frame that starts a shot (the first, and the first after a cut).
    pub params: DreamParams,
    /// The dream of a frame that continues the previous one.
    pub frame_params: DreamParams,
    pub continuation: Continuation,
    /// Where a new shot starts: [`crate::source::scenes::CutDetector`]'s threshold.
    pub scene_cut: f64,
    pub start: Option<f64>,
    /// Where `start` was given, for [`Job::check_source`].
    #[serde(skip)]
    pub start_origin: Option<Origin>,
    pub duration: Option<f64>,
    pub encoder: SinkOptions,
    /// Keyframed settings as written, and as read (by [`Job::animate`]).
    pub timelines: Vec<TimelineSpec>,
    pub animation: Animation,
}

impl Job {
    /// `deepdream dream INPUT -o OUTPUT`.
    pub fn dream(input: &Path, output: &Path, flags: &DreamFlags) -> Result<Job> {
        crate::io::output_format(output)?;
        let s = Settings::load(flags, DEFAULT_PRESET)?;
        let params = s.params()?;
        s.job(input, output, Work::Still { params: Box::new(params) })
    }

    /// `deepdream zoom INPUT -o OUTPUT`.
    pub fn zoom(input: &Path, output: &Path, flags: &DreamFlags, z: &ZoomFlags, e: &EncodeFlags) -> Result<Job> {
        crate::sink::check_output(output)?;
        let s = Settings::load(flags, ZOOM_PRESET)?;
        let params = s.params()?;
        let p = &s.file.preset.zoom;
        let rate =
            pick_with(flag("--fps", &z.fps), s.file.get("zoom.fps", &p.fps).map(|r| r.map(|r| r.text())), |t| {
                parse_rate(t)
            })?
            .unwrap_or(Rational::new(25, 1));
        // Each value given is checked where it was written; a flag settles a pair of preset
        // values that would otherwise conflict.
        let at_least_one = FRAMES;
        let frames_flag = flag("--frames", &z.frames).map(|f| f.check(at_least_one)).transpose()?;
        let frames_preset = s.file.get("zoom.frames", &p.frames).map(|f| f.check(at_least_one)).transpose()?;
        let seconds_flag = flag("--duration", &z.duration).map(|d| frames_for(d, rate)).transpose()?;
        let seconds_preset = s.file.get("zoom.duration", &p.duration);
        let seconds_origin = seconds_preset.as_ref().map(|d| d.origin.clone());
        let seconds_preset = seconds_preset.map(|d| frames_for(d, rate)).transpose()?;
        if let (None, None, Some(_), Some(origin)) = (frames_flag, seconds_flag, frames_preset, &seconds_origin) {
            return Err(origin.error("conflicts with `zoom.frames`: give one of them"));
        }
        let frames = frames_flag.or(seconds_flag).or(frames_preset).or(seconds_preset).unwrap_or(48);
        let rotate = pick(flag("--rotate", &z.rotate), s.file.get("zoom.rotate", &p.rotate), 0.0, Rule::Finite)?;
        let pan = match (flag("--pan", &z.pan), s.file.get("zoom.pan", &p.pan)) {
            (f, Some(p)) => {
                let preset = p.parse(|v| match v.as_slice() {
                    [x, y] => parse_pan(&format!("{x},{y}")),
                    _ => Err(format!("must be [x, y], two numbers, got {} of them", v.len())),
                })?;
                f.map_or(Ok(preset), |f| f.parse(parse_pan))?
            }
            (Some(f), None) => f.parse(parse_pan)?,
            (None, None) => (0.0, 0.0),
        };
        let transform = ZoomTransform { zoom: 1.04, rotate_deg: rotate, pan };
        let transform = Self::magnification(z, p, &s.file, rate, transform)?;
        let frame_steps =
            pick(flag("--frame-steps", &z.frame_steps), s.file.get("zoom.frame_steps", &p.frame_steps), 5, STEP_COUNT)?;
        let frame_params = DreamParams { octaves: 1, steps: frame_steps, ..params.clone() };
        let (loop_flag, loop_preset) = (flag("--loop", &z.loop_frames), s.file.get("zoom.loop", &p.loop_frames));
        let loop_origin = loop_flag.as_ref().or(loop_preset.as_ref()).map(|l| l.origin.clone());
        let loop_frames = pick(loop_flag, loop_preset, 0, FRAMES_OR_NONE)?;
        if let Some(origin) = loop_origin.filter(|_| loop_frames >= frames) {
            return Err(origin.error(format!("a loop fades over fewer frames than the zoom has ({frames})")));
        }
        let timelines = timeline_specs(&s, &z.animate, &frame_params, WorkKind::Zoom)?;
        if let (Some(spec), None) = (timelines.iter().find(|t| matches!(t.keys, SpecKeys::Audio(_))), &z.audio) {
            return Err(spec
                .origin
                .error(format!("{}: an audio curve follows --audio FILE, and none is given", spec.name)));
        }
        let plan = ZoomPlan {
            params,
            frame_params,
            frames,
            rate,
            transform,
            encoder: s.encoder(e)?,
            loop_frames,
            timelines,
            animation: Animation::default(),
            audio: z.audio.clone(),
        };
        Ok(Job { resume: e.resume, ..s.job(input, output, Work::Zoom(Box::new(plan)))? })
    }

    /// `deepdream video INPUT -o OUTPUT`.
    pub fn video(input: &Path, output: &Path, flags: &DreamFlags, v: &VideoFlags, e: &EncodeFlags) -> Result<Job> {
        crate::sink::check_output(output)?;
        let s = Settings::load(flags, VIDEO_PRESET)?;
        let params = s.params()?;
        let p = &s.file.preset.video;
        let motion_flag = v.motion.is_some();
        // Without --preset, the command's default preset's motion and its settings are
        // defaults, not choices: `--blend` alone still asks for blending.
        let implicit = flags.preset.is_none();
        let preset_motion = s.file.get("video.motion", &p.motion).filter(|_| !(implicit && v.blend.is_some()));
        let motion = pick_with(flag("--motion", &v.motion), preset_motion, |m| match m.as_str() {
            "flow" => Ok(true),
            "blend" => Ok(false),
            _ => Err(format!("unknown motion '{m}': expected flow or blend")),
        })?;
        // A blend given without a motion asks for blending (as before flow existed); otherwise
        // flow. A value for the other motion is a mistake, said where it was given (a preset's
        // value gives way to a --motion flag, and the default preset's to any choice).
        let blend_given = flag("--blend", &v.blend).or(s.file.get("video.blend", &p.blend));
        let flow = motion.unwrap_or(blend_given.is_none());
        let misplaced = |given: Option<Origin>, is_flag: bool| -> Result<()> {
            match given {
                Some(origin) if is_flag || !(motion_flag || implicit) => Err(origin.error(format!(
                    "applies only to motion {}, and this render's motion is {}",
                    if flow { "blend" } else { "flow" },
                    if flow { "flow (the default; --motion blend chooses blending)" } else { "blend" }
                ))),
                _ => Ok(()),
            }
        };
        if flow {
            misplaced(blend_given.map(|b| b.origin), v.blend.is_some())?;
        } else {
            let flow_only = [
                (flag("--warp", &v.warp).or(s.file.get("video.warp", &p.warp)).map(|x| x.origin), v.warp.is_some()),
                (flag("--cut", &v.cut).or(s.file.get("video.cut", &p.cut)).map(|x| x.origin), v.cut.is_some()),
                (
                    flag("--frame-octaves", &v.frame_octaves)
                        .or(s.file.get("video.frame_octaves", &p.frame_octaves))
                        .map(|x| x.origin),
                    v.frame_octaves.is_some(),
                ),
                (
                    flag("--frame-steps", &v.frame_steps)
                        .or(s.file.get("video.frame_steps", &p.frame_steps))
                        .map(|x| x.origin),
                    v.frame_steps.is_some(),
                ),
                (
                    flag("--frame-step", &v.frame_step)
                        .or(s.file.get("video.frame_step", &p.frame_step))
                        .map(|x| x.origin),
                    v.frame_step.is_some(),
                ),
            ];
            for (given, is_flag) in flow_only {
                misplaced(given, is_flag)?;
            }
        }
        // Every value given is checked, whichever motion uses it.
        let blend = pick(flag("--blend", &v.blend), s.file.get("video.blend", &p.blend), 0.0, Rule::From(0.0, 1.0))?;
        let warp = pick(flag("--warp", &v.warp), s.file.get("video.warp", &p.warp), 0.99, Rule::Between(0.0, 1.0))?;
        let cut = pick(flag("--cut", &v.cut), s.file.get("video.cut", &p.cut), 0.2, Rule::Between(0.0, 1.0))?;
        let frame_octaves = pick(
            flag("--frame-octaves", &v.frame_octaves),
            s.file.get("video.frame_octaves", &p.frame_octaves),
            params.octaves.min(2),
            Rule::Between(1.0, 64.0),
        )?;
        let frame_steps = pick(
            flag("--frame-steps", &v.frame_steps),
            s.file.get("video.frame_steps", &p.frame_steps),
            2,
            STEP_COUNT,
        )?;
        let frame_step = pick(
            flag("--frame-step", &v.frame_step),
            s.file.get("video.frame_step", &p.frame_step),
            params.step / 3.0,
            Rule::Positive,
        )?;
        let (continuation, frame_params) = match flow {
            true => (
                Continuation::Flow { warp, cut },
                DreamParams { octaves: frame_octaves, steps: frame_steps, step: frame_step, ..params.clone() },
            ),
            false => (Continuation::Blend { blend }, params.clone()),
        };
        let scene_cut = pick(
            flag("--scene-cut", &v.scene_cut),
            s.file.get("video.scene_cut", &p.scene_cut),
            DEFAULT_SCENE_CUT,
            Rule::Between(0.0, 100.0),
        )?;
        let (start_flag, start_preset) = (flag("--start", &v.start), s.file.get("video.start", &p.start));
        let start_origin = start_flag.as_ref().or(start_preset.as_ref()).map(|s| s.origin.clone());
        let start = optional(start_flag, start_preset, Rule::at_least(0.0))?;
        let duration =
            optional(flag("--duration", &v.duration), s.file.get("video.duration", &p.duration), Rule::Positive)?;
        let kind = if flow { WorkKind::Flow } else { WorkKind::Blend };
        let timelines = timeline_specs(&s, &v.animate, &frame_params, kind)?;
        let plan = VideoPlan {
            params,
            frame_params,
            continuation,
            scene_cut,
            start,
            start_origin,
            duration,
            encoder: s.encoder(e)?,
            timelines,
            animation: Animation::default(),
        };
        Ok(Job { resume: e.resume, ..s.job(input, output, Work::Video(Box::new(plan)))? })
    }

    /// The zoom per frame: `--zoom`, else `--zoom-per-second`, else the preset's `zoom` or
    /// `zoom_per_second` (not both); whichever gives it, a frame's magnification must stay
    /// within [0.01, 100].
    fn magnification(
        z: &ZoomFlags,
        p: &super::preset::ZoomSection,
        file: &PresetFile,
        rate: Rational,
        transform: ZoomTransform,
    ) -> Result<ZoomTransform> {
        let per_frame =
            |v: Option<Sourced<f64>>| v.map(|v| v.check(ZOOM).map(|zoom| ZoomTransform { zoom, ..transform }));
        let per_second = |v: Option<Sourced<f64>>| {
            v.map(|v| {
                let origin = v.origin.clone();
                let t = ZoomTransform::per_second(v.check(Rule::Positive)?, 0.0, (0.0, 0.0), rate.as_f64());
                match ZOOM.problem(t.zoom) {
                    None => Ok(ZoomTransform { zoom: t.zoom, ..transform }),
                    Some(_) => Err(origin.error(format!(
                        "gives {} per frame at {} fps; a frame may zoom 0.01 to 100 times",
                        t.zoom,
                        rate.as_f64()
                    ))),
                }
            })
        };
        let preset_frame = per_frame(file.get("zoom.zoom", &p.zoom)).transpose()?;
        let preset_second = per_second(file.get("zoom.zoom_per_second", &p.zoom_per_second)).transpose()?;
        let flag_frame = per_frame(flag("--zoom", &z.zoom)).transpose()?;
        let flag_second = per_second(flag("--zoom-per-second", &z.zoom_per_second)).transpose()?;
        if let (None, None, Some(_), Some(zps)) = (flag_frame, flag_second, preset_frame, &p.zoom_per_second) {
            return Err(file
                .origin("zoom.zoom_per_second", zps.span())
                .error("conflicts with `zoom.zoom`: give one of them"));
        }
        Ok(flag_frame.or(flag_second).or(preset_frame).or(preset_second).unwrap_or(transform))
    }

    /// Fits a recipe's octave count (not one given with --octaves) to an `h` x `w` input. A
    /// larger picture than [`OCTAVE_REFERENCE_SIDE`] gets one more octave per octave scale it
    /// is larger, so the smallest octave, where the dream's big features form, stays about as
    /// large as at the reference size: a 4K photo then looks like the examples rather than
    /// fine noise, for little more time (the added octaves are the small ones). An input too
    /// small for the smallest octave to reach the objective's layers loses octaves instead.
    /// Returns (before, after) when the count changed.
    pub fn fit_octaves(
        &mut self,
        net: &dyn crate::model::FeatureNet,
        (h, w): (usize, usize),
        device: &candle_core::Device,
    ) -> Result<Option<(usize, usize)>> {
        // Unknown layers are [`Job::check_network`]'s to report, with their origin.
        if self.octaves_given || self.unknown_layer(net).is_some() {
            return Ok(None);
        }
        let p = self.params();
        let (before, scale) = (p.octaves, p.octave_scale);
        let mut octaves = before;
        let long = h.max(w) as f64;
        // Below a scale of 1.2 neighbouring octaves are nearly the same size: the recipe is
        // deliberate, and growing it would multiply its work.
        if scale >= 1.2 && long > OCTAVE_REFERENCE_SIDE {
            octaves += ((long / OCTAVE_REFERENCE_SIDE).ln() / scale.ln()).round() as usize;
            octaves = octaves.min(64);
        }
        let (taps, logits) = (p.objective.taps(), !p.objective.classes.is_empty());
        while octaves > 1 {
            let (sh, sw) = crate::dream::octave_shapes(h, w, octaves, scale)[0];
            if crate::model::reaches(net, &taps, logits, (sh, sw), device)? {
                break;
            }
            octaves -= 1;
        }
        if octaves == before {
            return Ok(None);
        }
        match &mut self.work {
            Work::Still { params } => params.octaves = octaves,
            Work::Zoom(z) => z.params.octaves = octaves,
            Work::Video(v) => {
                // A blend render dreams every frame with the full recipe.
                if matches!(v.continuation, Continuation::Blend { .. }) {
                    v.frame_params.octaves = octaves;
                }
                v.params.octaves = octaves;
            }
        }
        Ok(Some((before, octaves)))
    }

    /// Reads the timelines' keys at `fps` (a video's once it is opened) into the animation,
    /// checking every value each curve reaches where it was written. An audio curve follows
    /// `loudness(frames)`, the RMS of each of the render's frames, asked for once.
    pub fn animate(&mut self, fps: f64, frames: u64, loudness: &mut dyn FnMut(u64) -> Result<Vec<f64>>) -> Result<()> {
        let specs = match &self.work {
            Work::Zoom(z) => z.timelines.clone(),
            Work::Video(v) => v.timelines.clone(),
            Work::Still { .. } => return Ok(()),
        };
        let mut heard: Option<Vec<f64>> = None;
        let mut tracks = Vec::new();
        let mut look_layers = Vec::new();
        if let Some(spec) = specs.iter().find(|s| matches!(s.keys, SpecKeys::Looks(_))) {
            let SpecKeys::Looks(text) = &spec.keys else { unreachable!("found above") };
            let looks = looks(text, fps, &self.model, &spec.origin)?;
            let (base, rest) = match &mut self.work {
                Work::Zoom(z) => (&mut z.params, &mut z.frame_params),
                Work::Video(v) => (&mut v.params, &mut v.frame_params),
                Work::Still { .. } => return Ok(()),
            };
            let (objective, look_tracks) = looks.objective(&base.objective);
            base.objective = objective.clone();
            rest.objective = objective;
            tracks.extend(look_tracks);
            look_layers = looks.layers.iter().map(|l| (l.clone(), spec.origin.clone())).collect();
        }
        self.layers.extend(look_layers);
        for spec in &specs {
            let (name, origin) = (&spec.name, &spec.origin);
            let timeline = match &spec.keys {
                SpecKeys::Looks(_) => continue,
                SpecKeys::Keys(text) => Timeline::parse(text, fps).map_err(|e| origin.error(format!("{name}: {e}")))?,
                SpecKeys::Audio(follow) => {
                    if heard.is_none() {
                        heard = Some(loudness(frames).map_err(|e| origin.blame(e))?);
                    }
                    follow.timeline(heard.as_deref().unwrap_or_default(), fps)
                }
            };
            let rule = match spec.target {
                Target::Zoom => ZOOM,
                Target::Step => Rule::Positive,
                Target::Steps => STEP_COUNT,
                Target::Jitter => Rule::Between(0.0, 4096.0),
                Target::Blend => Rule::From(0.0, 1.0),
                Target::Warp => Rule::Between(0.0, 1.0),
                Target::Rotate | Target::PanX | Target::PanY => Rule::Between(-100_000.0, 100_000.0),
                Target::Layer(_)
                | Target::GuideWeight
                | Target::StyleWeight
                | Target::Term { .. }
                | Target::Class { .. }
                | Target::Guide { .. } => Rule::Between(-10_000.0, 10_000.0),
            };
            let (lo, hi) = timeline.range();
            for v in [lo, hi] {
                if let Some(problem) = rule.problem(v) {
                    return Err(origin.error(format!("{name} reaches {v}: {problem}")));
                }
            }
            tracks.push((spec.target.clone(), timeline));
        }
        match &mut self.work {
            Work::Zoom(z) => z.animation = Animation { tracks, continuing_step: z.frame_params.step / z.params.step },
            Work::Video(v) => v.animation = Animation { tracks, continuing_step: v.frame_params.step / v.params.step },
            Work::Still { .. } => {}
        }
        Ok(())
    }

    /// The first layer the objective names that `net` lacks, with where it was named.
    pub fn unknown_layer(&self, net: &dyn crate::model::FeatureNet) -> Option<&(String, Origin)> {
        let names = net.layer_names();
        self.layers.iter().find(|(l, _)| !names.contains(l))
    }

    /// Whether a `LAYER:topK` term waits for [`Job::pick_top_channels`].
    pub fn wants_top_channels(&self) -> bool {
        self.params().objective.layers.iter().any(|t| t.top.is_some())
    }

    /// Resolves every `LAYER:topK` term of the objective into the K channels most active on
    /// `picture` (the photo, or a video's first frame), in every dream of the job. Returns
    /// what was chosen, to be told to the user.
    pub fn pick_top_channels(
        &mut self,
        net: &dyn crate::model::FeatureNet,
        picture: &image::RgbImage,
        device: &candle_core::Device,
    ) -> Result<Vec<(String, Vec<usize>)>> {
        let o = &self.params().objective;
        let image_terms = o.guides.iter().flat_map(|g| &g.layers).chain(o.style.iter().flat_map(|s| &s.layers));
        if let Some(t) = image_terms.into_iter().find(|t| t.top.is_some()) {
            return Err(Error::usage(format!(
                "{}:top{}: topK picks channels for --layers only",
                t.layer,
                t.top.unwrap_or(0)
            )));
        }
        if !self.wants_top_channels() {
            return Ok(Vec::new());
        }
        let input = net.normalization().apply(&crate::io::to_tensor(picture, device)?)?;
        let mut terms = self.params().objective.layers.clone();
        let picked = crate::dream::objective::pick_top_channels(&mut terms, net, &input)?;
        let all: Vec<&mut DreamParams> = match &mut self.work {
            Work::Still { params } => vec![params.as_mut()],
            Work::Zoom(z) => vec![&mut z.params, &mut z.frame_params],
            Work::Video(v) => vec![&mut v.params, &mut v.frame_params],
        };
        for p in all {
            p.objective.layers = terms.clone();
        }
        Ok(picked)
    }

    /// The dream settings of the first frame (of the only one, for a still).
    pub fn params(&self) -> &DreamParams {
        match &self.work {
            Work::Still { params } => params,
            Work::Zoom(z) => &z.params,
            Work::Video(v) => &v.params,
        }
    }

    /// The checks that need the network, run once right after the model loads and before any
    /// output is touched: layer names, classifier, channels, and whether the smallest octave
    /// of an `h` x `w` input reaches the objective's layers.
    pub fn check_network(
        &self,
        net: &dyn crate::model::FeatureNet,
        (h, w): (usize, usize),
        device: &candle_core::Device,
    ) -> Result<()> {
        if let Some((layer, origin)) = self.unknown_layer(net) {
            let valid = net.layer_names().join(", ");
            return Err(origin.error(format!("unknown layer '{layer}' for {}; valid layers: {valid}", net.name())));
        }
        let params = self.params();
        params.check_network(net)?;
        crate::dream::check_smallest_octave(net, params, (h, w), device).map_err(|e| match e {
            // A channel the layer lacks: said where that layer was named.
            Error::Usage(m) => match self.layers.iter().find(|(l, _)| m.starts_with(&format!("layer {l} has"))) {
                Some((_, origin)) => origin.error(m),
                None => Error::Usage(m),
            },
            e => e,
        })
    }

    /// Checks against the opened source: a video's `start` must fall inside it.
    pub fn check_source(&self, info: &crate::source::SourceInfo) -> Result<()> {
        if let (Work::Video(plan), Some(seconds)) = (&self.work, info.seconds)
            && let (Some(start), Some(origin)) = (plan.start, &plan.start_origin)
            && start >= seconds
        {
            return Err(origin.error(format!(
                "starts at {start} s, past the end of {} ({seconds:.2} s long)",
                self.input.display()
            )));
        }
        Ok(())
    }

    /// The number of frames the plan asks for, for a source of `frames` frames at `rate`
    /// (a video's duration, or what is left after its start).
    pub fn frame_count(&self, rate: f64, frames: Option<u64>) -> Option<u64> {
        match &self.work {
            Work::Still { .. } => Some(1),
            Work::Zoom(z) => Some(z.rendered_frames()),
            Work::Video(v) => {
                let skipped = (v.start.unwrap_or(0.0) * rate).round() as u64;
                let left = frames.map(|f| f.saturating_sub(skipped));
                v.duration.map(|d| (d * rate).round() as u64).map_or(left, |d| Some(left.map_or(d, |l| l.min(d))))
            }
        }
    }

    /// What a resume must match: the job (a guide or style image as a hash of its pixels)
    /// without the encoder settings, which the stored frames do not depend on; the model's
    /// weights and the input, by content (size, time, first and last MiB). One sha256.
    pub fn fingerprint(&self) -> Result<String> {
        use sha2::Digest;
        let weights = crate::model::locate(&self.model)?;
        let mut job = serde_json::to_value(self).map_err(|e| Error::internal(e.to_string()))?;
        if let Some(plan) =
            job["work"].as_object_mut().and_then(|w| w.values_mut().next()).and_then(|p| p.as_object_mut())
        {
            plan.remove("encoder");
        }
        // The input by content (below), not by how its path was spelt.
        if let Some(job) = job.as_object_mut() {
            job.remove("input");
            job.remove("output");
        }
        let text = serde_json::json!({
            "job": job,
            "weights": weights.content_hash()?,
            "input": crate::io::content_hash(&self.input)?,
        });
        Ok(crate::io::hex(&sha2::Sha256::digest(text.to_string().as_bytes())))
    }
}

/// ffmpeg's `scdet` threshold: hard cuts, not fast motion.
const DEFAULT_SCENE_CUT: f64 = 10.0;

/// The keyframed settings as written: the preset's `[timeline]` and the `--animate` flags (a
/// flag's timeline replaces the preset's for its setting), each name checked where it was
/// written. Their keys are read by [`Job::animate`], once the frame rate is known.
fn timeline_specs(s: &Settings, flags: &[String], params: &DreamParams, work: WorkKind) -> Result<Vec<TimelineSpec>> {
    use super::preset::TimelineEntry;
    let mut given: Vec<(String, SpecKeys, Origin)> = Vec::new();
    for (k, v) in &s.file.preset.timeline {
        let origin = s.file.origin(&format!("timeline.{k}"), v.span());
        let keys = match v.get_ref() {
            TimelineEntry::Keys(text) => SpecKeys::Keys(text.clone()),
            TimelineEntry::Audio(a) => {
                if a.audio != "rms" {
                    return Err(origin.error(format!("audio = \"{}\": the loudness is \"rms\"", a.audio)));
                }
                SpecKeys::Audio(AudioFollow::new(a.min, a.max, a.smooth.unwrap_or(0.1)).map_err(|e| origin.error(e))?)
            }
        };
        given.push((k.clone(), keys, origin));
    }
    for f in flags {
        let (name, keys) =
            f.split_once('=').ok_or_else(|| Error::usage(format!("--animate: `{f}` is not SETTING=KEYS")))?;
        let name = name.trim().to_owned();
        let origin = Origin::Flag("--animate");
        let keys = match AudioFollow::parse(keys).map_err(|e| origin.error(format!("{name}: {e}")))? {
            Some(follow) => SpecKeys::Audio(follow),
            None => SpecKeys::Keys(keys.to_owned()),
        };
        given.retain(|(n, ..)| *n != name);
        given.push((name, keys, origin));
    }
    let mut specs = Vec::new();
    for (name, keys, origin) in given {
        if name == "look" {
            let SpecKeys::Keys(text) = keys else {
                return Err(origin.error("look: keys name presets, e.g. \"0: patterns, 4s: objects ease\""));
            };
            specs.push(TimelineSpec { name, target: Target::Blend, keys: SpecKeys::Looks(text), origin });
            continue;
        }
        let target = match name.as_str() {
            "zoom" => Target::Zoom,
            "rotate" => Target::Rotate,
            "pan_x" => Target::PanX,
            "pan_y" => Target::PanY,
            "step" => Target::Step,
            "frame_steps" => Target::Steps,
            "jitter" => Target::Jitter,
            "guide_weight" => Target::GuideWeight,
            "style_weight" => Target::StyleWeight,
            "blend" => Target::Blend,
            "warp" => Target::Warp,
            n => match n.strip_prefix("layers.") {
                Some(layer) if params.objective.layers.iter().any(|t| t.layer == layer) => Target::Layer(layer.into()),
                Some(layer) => {
                    return Err(origin.error(format!(
                        "the objective has no layer {layer} to animate; name it in --layers or [dream.layers] (a weight of 0 fades it in)"
                    )));
                }
                None => {
                    return Err(origin.error(format!(
                        "`{n}` cannot be animated; these can: zoom, rotate, pan_x, pan_y (a zoom's), step, frame_steps, jitter, layers.NAME, guide_weight, style_weight, blend and warp (a video's)"
                    )));
                }
            },
        };
        let misplaced = match (&target, work) {
            (Target::Zoom | Target::Rotate | Target::PanX | Target::PanY, WorkKind::Flow | WorkKind::Blend) => {
                Some("moves a zoom; a video's frames are not zoomed")
            }
            (Target::Blend | Target::Warp, WorkKind::Zoom) => Some("is a video's setting"),
            (Target::Blend, WorkKind::Flow) => Some("applies to --motion blend, and this render's motion is flow"),
            (Target::Warp, WorkKind::Blend) => Some("applies to --motion flow, and this render's motion is blend"),
            (Target::Steps, WorkKind::Blend) => {
                Some("applies to --motion flow's light continuation; a blend render dreams every frame in full")
            }
            _ => None,
        };
        if let Some(why) = misplaced {
            return Err(origin.error(format!("{name} {why}")));
        }
        let missing = match target {
            Target::GuideWeight => params.objective.guides.is_empty().then_some("guide image (--guide)"),
            Target::StyleWeight => params.objective.style.is_none().then_some("style image (--style)"),
            _ => None,
        };
        if let Some(what) = missing {
            return Err(origin.error(format!("{name}: the objective has no {what}")));
        }
        specs.push(TimelineSpec { name, target, keys, origin });
    }
    let look = specs.iter().any(|s| matches!(s.keys, SpecKeys::Looks(_)));
    if let Some(layer) = specs.iter().find(|s| look && matches!(s.target, Target::Layer(_))) {
        return Err(layer
            .origin
            .error(format!("{}: a look sets the layers' weights; animate one or the other", layer.name)));
    }
    Ok(specs)
}

/// A sequence of looks: each key's preset, read for its objective (layers and classes).
struct Looks {
    /// Each key: its frame, its look's index in `objectives`, how it moves on.
    keys: Vec<(f64, usize, crate::dream::timeline::Interp)>,
    names: Vec<String>,
    objectives: Vec<crate::dream::objective::Objective>,
    /// Every layer the looks name, for the check against the network.
    layers: Vec<String>,
}

/// Reads `look = "0: patterns, 4s: objects ease"`: each name a built-in preset or a file.
fn looks(text: &str, fps: f64, model: &str, origin: &Origin) -> Result<Looks> {
    use crate::dream::timeline::{Interp, parse_keys};
    let keys = parse_keys(text, fps, |v| Ok(v.to_owned())).map_err(|e| origin.error(format!("look: {e}")))?;
    let mut out = Looks { keys: Vec::new(), names: Vec::new(), objectives: Vec::new(), layers: Vec::new() };
    for (frame, name, interp) in keys {
        let index = match out.names.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                let flags =
                    DreamFlags { preset: Some(name.clone()), model: Some(model.to_owned()), ..Default::default() };
                let s = Settings::load(&flags, &name).map_err(|e| origin.error(format!("look {name}: {e}")))?;
                let params = s.params().map_err(|e| origin.error(format!("look {name}: {e}")))?;
                let o = params.objective;
                let other = out.objectives.iter().zip(&out.names).find(|(p, _)| p.style.is_some());
                if let (true, Some((_, other))) = (o.style.is_some(), other) {
                    return Err(origin.error(format!(
                        "looks {other} and {name} both have a style image; a render dreams toward one style image"
                    )));
                }
                let images = o.guides.iter().flat_map(|g| &g.layers).chain(o.style.iter().flat_map(|s| &s.layers));
                out.layers.extend(images.map(|t| t.layer.clone()));
                if o.layers.iter().any(|t| t.top.is_some()) {
                    return Err(origin
                        .error(format!("look {name}: a LAYER:topK term cannot fade (its channels are picked later)")));
                }
                out.layers.extend(o.layers.iter().map(|t| t.layer.clone()));
                out.names.push(name);
                out.objectives.push(o);
                out.names.len() - 1
            }
        };
        // A look's weight eases rather than overshooting 0 or 1.
        let interp = if interp == Interp::Smooth { Interp::Ease } else { interp };
        out.keys.push((frame, index, interp));
    }
    let modes: Vec<_> = out.objectives.iter().filter(|o| !o.classes.is_empty()).map(|o| o.class_mode).collect();
    if modes.windows(2).any(|w| w[0] != w[1]) {
        return Err(origin.error("look: the looks score their classes differently (class_mode); give them one"));
    }
    Ok(out)
}

impl Looks {
    /// The objective of all the looks together (`base` gives the rest: border, tv), and the
    /// tracks that weigh each look's terms by how much that look shows at each frame.
    fn objective(
        &self,
        base: &crate::dream::objective::Objective,
    ) -> (crate::dream::objective::Objective, Vec<(Target, Timeline)>) {
        use crate::dream::timeline::{Key, Timeline};
        let mut objective = base.clone();
        objective.layers.clear();
        objective.classes.clear();
        objective.guides.clear();
        objective.style = None;
        let mut tracks = Vec::new();
        for (i, (name, o)) in self.names.iter().zip(&self.objectives).enumerate() {
            // 1 at this look's keys, 0 at the others', moving as each key says.
            let keys: Vec<Key> = self
                .keys
                .iter()
                .map(|&(frame, look, interp)| Key { frame, value: if look == i { 1.0 } else { 0.0 }, interp })
                .collect();
            let weight = Timeline::from_keys(keys);
            for term in &o.layers {
                let label = match term.channel {
                    Some(c) => format!("{name}:{}:{c}", term.layer),
                    None => format!("{name}:{}", term.layer),
                };
                tracks.push((Target::Term { index: objective.layers.len(), label }, weight.scaled(term.weight as f64)));
                objective.layers.push(term.clone());
            }
            for &(class, w) in &o.classes {
                let label = format!("{name}:class {class}");
                tracks.push((Target::Class { index: objective.classes.len(), label }, weight.scaled(w as f64)));
                objective.classes.push((class, w));
                objective.class_mode = o.class_mode;
            }
            // A look's guide images fade with it (one style image at most among the looks).
            for g in &o.guides {
                let label = format!("{name}:guide weight");
                tracks.push((Target::Guide { index: objective.guides.len(), label }, weight.scaled(g.weight as f64)));
                objective.guides.push(g.clone());
            }
            if let Some(st) = &o.style {
                tracks.push((Target::StyleWeight, weight.scaled(st.weight as f64)));
                objective.style = Some(st.clone());
            }
        }
        (objective, tracks)
    }
}

/// Which render a timeline animates (what it may name).
#[derive(Clone, Copy, PartialEq, Eq)]
enum WorkKind {
    Zoom,
    Flow,
    Blend,
}

/// A keyframed setting as written, read into a [`Timeline`] by [`Job::animate`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct TimelineSpec {
    pub name: String,
    pub target: Target,
    pub keys: SpecKeys,
    #[serde(skip)]
    pub origin: Origin,
}

/// Keys as written, a curve that follows the loudness of a sound track, or a sequence of
/// looks (presets) to cross-fade.
#[derive(Clone, Debug, serde::Serialize)]
pub enum SpecKeys {
    Keys(String),
    Audio(AudioFollow),
    Looks(String),
}

/// Steps on a continuing zoom frame: zero zooms without dreaming.
const STEP_COUNT: Rule = Rule::Between(0.0, 100_000.0);

/// The frame count for `seconds` at `rate`: at least one.
fn frames_for(seconds: Sourced<f64>, rate: Rational) -> Result<u64> {
    let origin = seconds.origin.clone();
    let d = seconds.check(Rule::Positive)?;
    let frames = (d * rate.as_f64()).round();
    match FRAMES.problem(frames) {
        None => Ok(frames as u64),
        Some(_) => {
            Err(origin.error(format!("{d} s is {frames} frames at {} fps; a zoom has 1 to 1000000", rate.as_f64())))
        }
    }
}

/// A loop's fade, in frames (0: no loop).
const FRAMES_OR_NONE: Rule = Rule::Between(0.0, 1_000_000.0);

/// A zoom's length in frames: eleven hours at 25 fps.
const FRAMES: Rule = Rule::Between(1.0, 1_000_000.0);

/// A frame's magnification.
const ZOOM: Rule = Rule::Between(0.01, 100.0);
