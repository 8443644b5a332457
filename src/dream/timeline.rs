//! Keyframed settings: a value that changes over a render, written as keys
//! `"0: 1.02, 4s: 1.06 ease, 00:00:08: 1.02"`. A key's time is a frame number (`48`), seconds
//! (`2.5s`) or a clock time (`01:30`, `00:01:30.5`); its value is a number; the word after it
//! says how the value moves from this key to the next: `linear` (the default), `step` (holds
//! until the next key), `ease` (smoothstep: eases out of this key and into the next), or
//! `smooth` (a Catmull-Rom spline through the neighbouring keys, so the speed carries on
//! through a key). Before the first key the value is the first key's, after the last the
//! last's. Hand-written: the keyframe strings of the animation tools are a small language of
//! their own, and no crate parses it.

/// How a value moves from one key to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interp {
    Step,
    Linear,
    Ease,
    Smooth,
}

/// One key: a frame position (fractional where given in seconds), its value, and how the
/// value moves on to the next key.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Key {
    pub frame: f64,
    pub value: f64,
    pub interp: Interp,
}

/// A keyframed value.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Timeline {
    keys: Vec<Key>,
}

impl Timeline {
    /// Parses keys written as above, at `rate` frames per second. The error says which key.
    pub fn parse(text: &str, rate: f64) -> Result<Timeline, String> {
        let number = |v: &str| v.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or("is not a finite number");
        let keys = parse_keys(text, rate, number)?;
        Ok(Timeline { keys: keys.into_iter().map(|(frame, value, interp)| Key { frame, value, interp }).collect() })
    }

    /// The same curve with every value multiplied by `factor` (each way of moving between
    /// keys is linear in the values).
    pub fn scaled(&self, factor: f64) -> Timeline {
        Timeline { keys: self.keys.iter().map(|k| Key { value: k.value * factor, ..*k }).collect() }
    }

    /// A timeline of keys already read (in time order).
    pub fn from_keys(keys: Vec<Key>) -> Timeline {
        match keys.is_empty() {
            true => Timeline { keys: vec![Key { frame: 0.0, value: 0.0, interp: Interp::Step }] },
            false => Timeline { keys },
        }
    }

    /// One key per frame, straight lines between (a curve computed, not written).
    pub fn from_samples(values: &[f64]) -> Timeline {
        let keys = values.iter().enumerate().map(|(i, &value)| Key { frame: i as f64, value, interp: Interp::Linear });
        let keys: Vec<Key> = keys.collect();
        match keys.is_empty() {
            true => Timeline { keys: vec![Key { frame: 0.0, value: 0.0, interp: Interp::Step }] },
            false => Timeline { keys },
        }
    }

    /// Whether it is a computed curve (more keys than anyone writes): printed frame by frame.
    pub fn is_dense(&self) -> bool {
        self.keys.len() > 64
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The value at frame `frame`.
    pub fn at(&self, frame: f64) -> f64 {
        let k = &self.keys;
        let i = k.partition_point(|key| key.frame <= frame);
        if i == 0 {
            return k[0].value;
        }
        if i == k.len() {
            return k[i - 1].value;
        }
        let (a, b) = (k[i - 1], k[i]);
        let t = (frame - a.frame) / (b.frame - a.frame);
        match a.interp {
            Interp::Step => a.value,
            Interp::Linear => a.value + (b.value - a.value) * t,
            Interp::Ease => a.value + (b.value - a.value) * t * t * (3.0 - 2.0 * t),
            Interp::Smooth => {
                // Catmull-Rom on uneven spacing: tangents from the neighbours, in value per frame.
                let slope = |p: Key, q: Key| (q.value - p.value) / (q.frame - p.frame);
                let before = if i >= 2 { slope(k[i - 2], b) } else { slope(a, b) };
                let after = if i + 1 < k.len() { slope(a, k[i + 1]) } else { slope(a, b) };
                let span = b.frame - a.frame;
                let (m0, m1) = (before * span, after * span);
                let (t2, t3) = (t * t, t * t * t);
                (2.0 * t3 - 3.0 * t2 + 1.0) * a.value
                    + (t3 - 2.0 * t2 + t) * m0
                    + (-2.0 * t3 + 3.0 * t2) * b.value
                    + (t3 - t2) * m1
            }
        }
    }

    /// The smallest and largest value it takes: its keys' (every other way of moving stays
    /// between them), and where a smooth segment may overshoot them, 64 points of it.
    pub fn range(&self) -> (f64, f64) {
        let mut values: Vec<f64> = self.keys.iter().map(|k| k.value).collect();
        for w in self.keys.windows(2).filter(|w| w[0].interp == Interp::Smooth) {
            values.extend((1..64).map(|i| self.at(w[0].frame + (w[1].frame - w[0].frame) * i as f64 / 64.0)));
        }
        values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }
}

/// A setting that follows the loudness of an audio track: `min` in silence, `max` at the
/// track's loud frames (its 98th-percentile RMS; louder ones stay at `max`), smoothed over
/// `smooth` seconds forwards and backwards, so the curve does not lag behind the beat.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AudioFollow {
    pub min: f64,
    pub max: f64,
    pub smooth: f64,
}

impl AudioFollow {
    /// `audio(min=0.005, max=0.03, smooth=0.2)` (smooth optional, default 0.1 s), or `None`
    /// when the text is keys rather than an audio curve.
    pub fn parse(text: &str) -> Result<Option<AudioFollow>, String> {
        let Some(inner) = text.trim().strip_prefix("audio") else { return Ok(None) };
        let inner = inner.trim();
        let inner = inner
            .strip_prefix('(')
            .and_then(|i| i.strip_suffix(')'))
            .ok_or_else(|| "an audio curve is written audio(min=A, max=B, smooth=S)".to_owned())?;
        let (mut min, mut max, mut smooth) = (None, None, 0.1);
        for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("`{part}` is not NAME=VALUE"))?;
            let v: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| format!("`{part}`: not a number"))?;
            match k.trim() {
                "min" => min = Some(v),
                "max" => max = Some(v),
                "smooth" => smooth = v,
                other => return Err(format!("unknown `{other}` (min, max, smooth)")),
            }
        }
        let (Some(min), Some(max)) = (min, max) else { return Err("an audio curve needs min= and max=".into()) };
        AudioFollow::new(min, max, smooth).map(Some)
    }

    pub fn new(min: f64, max: f64, smooth: f64) -> Result<AudioFollow, String> {
        if !min.is_finite() || !max.is_finite() {
            return Err(format!("min and max must be finite numbers, got {min} and {max}"));
        }
        if !(0.0..=10.0).contains(&smooth) {
            return Err(format!("smooth is in seconds, 0 to 10, got {smooth}"));
        }
        Ok(AudioFollow { min, max, smooth })
    }

    /// The curve for frames of the given loudness at `fps`.
    pub fn timeline(&self, loudness: &[f64], fps: f64) -> Timeline {
        let mut sorted: Vec<f64> = loudness.to_vec();
        sorted.sort_by(f64::total_cmp);
        let loud = sorted.get((sorted.len() as f64 * 0.98) as usize).or(sorted.last()).copied().unwrap_or(0.0);
        let mut level: Vec<f64> =
            loudness.iter().map(|&l| if loud > 0.0 { (l / loud).min(1.0) } else { 0.0 }).collect();
        // A one-pole low-pass run forwards, then backwards: smooth, and centred on the beat.
        if self.smooth > 0.0 && level.len() > 1 {
            let a = 1.0 - (-1.0 / (self.smooth * fps)).exp();
            for pass in 0..2 {
                let mut y = if pass == 0 { level[0] } else { level[level.len() - 1] };
                let mut step = |v: &mut f64| {
                    y += a * (*v - y);
                    *v = y;
                };
                match pass {
                    0 => level.iter_mut().for_each(&mut step),
                    _ => level.iter_mut().rev().for_each(&mut step),
                }
            }
        }
        let values: Vec<f64> = level.iter().map(|l| self.min + (self.max - self.min) * l).collect();
        match values.is_empty() {
            true => Timeline::from_samples(&[self.min]),
            false => Timeline::from_samples(&values),
        }
    }
}

/// Keys `TIME: VALUE [how]`, comma-separated in time order, each value read by `value` (its
/// error is said with the key).
pub fn parse_keys<T>(
    text: &str,
    rate: f64,
    value: impl Fn(&str) -> Result<T, &'static str>,
) -> Result<Vec<(f64, T, Interp)>, String> {
    let mut keys: Vec<(f64, T, Interp)> = Vec::new();
    for (n, part) in text.split(',').map(str::trim).enumerate() {
        if part.is_empty() {
            return Err(format!(
                "key {} is empty (keys are `TIME: VALUE [step|linear|ease|smooth]`, comma-separated)",
                n + 1
            ));
        }
        let (time, rest) = part
            .rsplit_once(':')
            .ok_or_else(|| format!("key {} `{part}` has no `:` between its time and its value", n + 1))?;
        let mut words = rest.split_whitespace();
        let written = words.next().ok_or_else(|| format!("key {} `{part}` has no value", n + 1))?;
        let v = value(written).map_err(|why| format!("key {} `{part}`: `{written}` {why}", n + 1))?;
        let interp = match words.next() {
            None | Some("linear") => Interp::Linear,
            Some("step") => Interp::Step,
            Some("ease") => Interp::Ease,
            Some("smooth") => Interp::Smooth,
            Some(w) => {
                return Err(format!(
                    "key {} `{part}`: unknown interpolation `{w}` (step, linear, ease, smooth)",
                    n + 1
                ));
            }
        };
        if let Some(w) = words.next() {
            return Err(format!("key {} `{part}`: unexpected `{w}`", n + 1));
        }
        let frame = parse_time(time.trim(), rate).map_err(|e| format!("key {} `{part}`: {e}", n + 1))?;
        if let Some(last) = keys.last()
            && frame <= last.0
        {
            return Err(format!("key {} `{part}` is not after the key before it: keys go in time order", n + 1));
        }
        keys.push((frame, v, interp));
    }
    Ok(keys)
}

/// A key's time in frames: `48`, `2.5s`, `01:30`, `00:01:30.5`.
fn parse_time(time: &str, rate: f64) -> Result<f64, String> {
    let bad = || format!("`{time}` is not a time: a frame (48), seconds (2.5s) or a clock time (01:30, 00:01:30.5)");
    let frames = if let Some(seconds) = time.strip_suffix('s') {
        seconds.trim().parse::<f64>().map_err(|_| bad())? * rate
    } else if time.contains(':') {
        let mut seconds = 0.0;
        let parts: Vec<&str> = time.split(':').collect();
        if parts.len() > 3 {
            return Err(bad());
        }
        for part in parts {
            let v: f64 = part.trim().parse().map_err(|_| bad())?;
            if v < 0.0 {
                return Err(bad());
            }
            seconds = seconds * 60.0 + v;
        }
        seconds * rate
    } else {
        let frame: u64 = time.parse().map_err(|_| bad())?;
        frame as f64
    };
    if !frames.is_finite() || frames < 0.0 {
        return Err(bad());
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_frames_seconds_and_clock_times() {
        let t = Timeline::parse("0: 1.0, 2s: 2.0 step, 00:00:04: 3 ease, 150: 1 smooth, 200: 1", 25.0).unwrap();
        let frames: Vec<f64> = t.keys().iter().map(|k| k.frame).collect();
        assert_eq!(frames, [0.0, 50.0, 100.0, 150.0, 200.0]);
        assert_eq!(t.at(-5.0), 1.0);
        assert_eq!(t.at(25.0), 1.5, "linear");
        assert_eq!(t.at(75.0), 2.0, "step holds");
        assert_eq!(t.at(100.0), 3.0);
        assert_eq!(t.at(125.0), 2.0, "ease is symmetric about the middle");
        assert!(t.at(105.0) > 2.9, "ease leaves its key slowly");
        assert_eq!(t.at(1000.0), 1.0);
    }

    #[test]
    fn a_smooth_curve_passes_through_its_keys_without_corners() {
        let t = Timeline::parse("0: 0 smooth, 10: 10 smooth, 20: 30 smooth, 30: 30", 25.0).unwrap();
        for (f, v) in [(0.0, 0.0), (10.0, 10.0), (20.0, 30.0), (30.0, 30.0)] {
            assert!((t.at(f) - v).abs() < 1e-9);
        }
        // The slope just before a key equals the slope just after it.
        let slope = |f: f64| (t.at(f + 1e-4) - t.at(f - 1e-4)) / 2e-4;
        let (before, after) = ((t.at(10.0) - t.at(10.0 - 1e-3)) / 1e-3, (t.at(10.0 + 1e-3) - t.at(10.0)) / 1e-3);
        assert!((before - after).abs() < 0.01, "{before} vs {after}");
        assert!((slope(10.0) - 1.5).abs() < 0.01, "the tangent through key 10 joins its neighbours: {}", slope(10.0));
    }

    #[test]
    fn an_audio_curve_follows_the_loudness_without_lag() {
        let follow = AudioFollow::parse("audio(min=1, max=3, smooth=0.1)").unwrap().unwrap();
        // A beat: loud on frames 10..13 of 40 at 25 fps.
        let loudness: Vec<f64> = (0..40).map(|i| if (10..13).contains(&i) { 0.5 } else { 0.01 }).collect();
        let t = follow.timeline(&loudness, 25.0);
        let peak = (0..40).max_by(|&a, &b| t.at(a as f64).total_cmp(&t.at(b as f64))).unwrap();
        assert_eq!(peak, 11, "the curve peaks on the beat, not after it");
        assert!(t.at(11.0) > 1.6 && t.at(0.0) < 1.1 && t.at(39.0) < 1.1, "{} {} {}", t.at(11.0), t.at(0.0), t.at(39.0));
        assert_eq!(AudioFollow::parse("0: 1, 2: 3").unwrap(), None);
        assert!(AudioFollow::parse("audio(min=1)").unwrap_err().contains("max="));
        assert!(AudioFollow::parse("audio(min=1, max=2, loud=3)").unwrap_err().contains("unknown"));
    }

    #[test]
    fn mistakes_name_their_key() {
        let e = |s: &str| Timeline::parse(s, 24.0).unwrap_err();
        assert!(e("0: 1, 10 2").contains("key 2"));
        assert!(e("0: 1, 2s: x").contains("not a finite number"));
        assert!(e("0: nan").contains("not a finite number"));
        assert!(e("5: 1, 3: 2").contains("time order"));
        assert!(e("0: 1 wobble").contains("unknown interpolation"));
        assert!(e("-3: 1").contains("not a time"));
        assert!(e("0: 1,").contains("empty"));
    }
}
