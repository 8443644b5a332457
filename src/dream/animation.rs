//! Settings that follow a timeline over a render (keyframes, [`super::timeline`]):
//! for frame k, the zoom's transform and the dream's settings are the constant ones with each
//! animated setting replaced by its timeline's value at k. Layer weights animated together
//! cross-fade one look into another (patterns into objects) instead of cutting.

use super::timeline::Timeline;
use super::{DreamParams, ZoomTransform};

/// What a timeline drives.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The zoom's magnification per frame, turn (degrees) and pan (pixels) per frame.
    Zoom,
    Rotate,
    PanX,
    PanY,
    /// The step size, the steps and the jitter of a frame's dream.
    Step,
    Steps,
    Jitter,
    /// The weight of every term of one layer of the objective.
    Layer(String),
    GuideWeight,
    StyleWeight,
    /// A video's blend (motion blend) or warp weight (motion flow).
    Blend,
    Warp,
    /// The weight of one term of the objective's layers or classes (a look's, fading in or
    /// out): its index there, and a name for people.
    Term {
        index: usize,
        label: String,
    },
    Class {
        index: usize,
        label: String,
    },
    /// The weight of one guide image (a look's).
    Guide {
        index: usize,
        label: String,
    },
}

impl Target {
    /// The name a preset or `--animate` gives it.
    pub fn name(&self) -> String {
        match self {
            Target::Zoom => "zoom".into(),
            Target::Rotate => "rotate".into(),
            Target::PanX => "pan_x".into(),
            Target::PanY => "pan_y".into(),
            Target::Step => "step".into(),
            Target::Steps => "frame_steps".into(),
            Target::Jitter => "jitter".into(),
            Target::Layer(l) => format!("layers.{l}"),
            Target::GuideWeight => "guide_weight".into(),
            Target::StyleWeight => "style_weight".into(),
            Target::Blend => "blend".into(),
            Target::Warp => "warp".into(),
            Target::Term { label, .. } | Target::Class { label, .. } | Target::Guide { label, .. } => label.clone(),
        }
    }
}

/// The animated settings of a render (none: every frame alike).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Animation {
    pub tracks: Vec<(Target, Timeline)>,
    /// A continuing frame's step size over a shot's first frame's (a video's light flow
    /// continuation steps at a third): an animated `step` keeps that ratio (0: none given, 1).
    pub continuing_step: f64,
}

impl Animation {
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// The value of `target` at `frame`, if it is animated.
    pub fn value(&self, target: &Target, frame: u64) -> Option<f64> {
        self.tracks.iter().find(|(t, _)| t == target).map(|(_, timeline)| timeline.at(frame as f64))
    }

    /// The zoom transform that makes frame `frame` from the frame before it.
    pub fn transform(&self, frame: u64, base: ZoomTransform) -> ZoomTransform {
        ZoomTransform {
            zoom: self.value(&Target::Zoom, frame).unwrap_or(base.zoom),
            rotate_deg: self.value(&Target::Rotate, frame).unwrap_or(base.rotate_deg),
            pan: (
                self.value(&Target::PanX, frame).unwrap_or(base.pan.0),
                self.value(&Target::PanY, frame).unwrap_or(base.pan.1),
            ),
        }
    }

    /// The dream settings of frame `frame`: `base` with every animated one at its value there.
    /// The zoom's first frame keeps its own step count (`frame_steps` drives the others).
    pub fn params(&self, frame: u64, base: &DreamParams, continues: bool) -> DreamParams {
        let mut p = base.clone();
        for (target, timeline) in &self.tracks {
            let v = timeline.at(frame as f64);
            match target {
                Target::Step if continues && self.continuing_step > 0.0 => p.step = v * self.continuing_step,
                Target::Step => p.step = v,
                Target::Steps if continues => p.steps = v.round() as usize,
                Target::Jitter => p.jitter = v.round() as usize,
                Target::Layer(layer) => {
                    for term in p.objective.layers.iter_mut().filter(|t| t.layer == *layer) {
                        term.weight = v as f32;
                    }
                }
                Target::Term { index, .. } => {
                    if let Some(term) = p.objective.layers.get_mut(*index) {
                        term.weight = v as f32;
                    }
                }
                Target::Guide { index, .. } => {
                    if let Some(g) = p.objective.guides.get_mut(*index) {
                        g.weight = v as f32;
                    }
                }
                Target::Class { index, .. } => {
                    if let Some(class) = p.objective.classes.get_mut(*index) {
                        class.1 = v as f32;
                    }
                }
                Target::GuideWeight => {
                    for g in &mut p.objective.guides {
                        g.weight = v as f32;
                    }
                }
                Target::StyleWeight => {
                    if let Some(s) = p.objective.style.as_mut() {
                        s.weight = v as f32;
                    }
                }
                Target::Steps
                | Target::Zoom
                | Target::Rotate
                | Target::PanX
                | Target::PanY
                | Target::Blend
                | Target::Warp => {}
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dream::objective::{LayerTerm, Objective};

    #[test]
    fn a_frame_gets_each_animated_setting_at_its_time() {
        let base = DreamParams {
            objective: Objective::layers(vec![LayerTerm::new("block5", 1.0), LayerTerm::new("block10", 0.0)]),
            regularize: Default::default(),
            octaves: 2,
            octave_scale: 1.4,
            steps: 3,
            step: 0.02,
            max_loss: None,
            jitter: 0,
            seed: 0,
            tiling: Default::default(),
            original_colors: false,
        };
        let timeline = |s: &str| Timeline::parse(s, 10.0).unwrap();
        let a = Animation {
            tracks: vec![
                (Target::Layer("block5".into()), timeline("0: 1, 10: 0")),
                (Target::Layer("block10".into()), timeline("0: 0, 10: 1")),
                (Target::Steps, timeline("0: 2, 1s: 6")),
                (Target::Zoom, timeline("0: 1.0, 20: 2.0")),
            ],
            continuing_step: 0.0,
        };
        let p = a.params(5, &base, true);
        let weights: Vec<f32> = p.objective.layers.iter().map(|t| t.weight).collect();
        assert_eq!(weights, [0.5, 0.5], "a cross-fade of two looks");
        assert_eq!(p.steps, 4);
        assert_eq!(a.params(5, &base, false).steps, base.steps, "a shot's first frame keeps its steps");
        let t = a.transform(10, ZoomTransform { zoom: 1.04, rotate_deg: 0.2, pan: (1.0, 2.0) });
        assert_eq!((t.zoom, t.rotate_deg, t.pan), (1.5, 0.2, (1.0, 2.0)));
    }
}
