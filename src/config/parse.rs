//! The small languages of settings: `block5=1,block12:97=2` layer lists, class lists, modes,
//! frame rates, pans and sizes. Each returns the problem as text; the caller adds the origin.

use crate::dream::{ClassMode, GuideMode, LayerTerm, class_index};
use crate::media::Rational;
use crate::{Error, Result};

/// A layer name with an optional channel: `block12` or `block12:97`.
pub fn layer_term(name: &str, weight: f32) -> Result<LayerTerm> {
    if let Some((l, k)) = name.split_once(':')
        && let Some(k) = k.trim().strip_prefix("top")
    {
        let top = k.parse::<usize>().ok().filter(|k| (1..=4096).contains(k)).ok_or_else(|| {
            Error::usage(format!("bad channel count '{k}' in '{name}': expected topK with K from 1 to 4096"))
        })?;
        return Ok(LayerTerm { layer: l.trim().to_owned(), channel: None, weight, top: Some(top) });
    }
    let (layer, channel) = match name.split_once(':') {
        Some((l, c)) => {
            let c = c
                .trim()
                .parse::<usize>()
                .map_err(|_| Error::usage(format!("bad channel '{c}' in '{name}': expected a number")))?;
            (l.trim(), Some(c))
        }
        None => (name.trim(), None),
    };
    Ok(LayerTerm { layer: layer.to_owned(), channel, weight, top: None })
}

/// Parses `NAME=WEIGHT,NAME` (a bare name weighs 1) into (name, weight) pairs.
fn parse_weighted(spec: &str, what: &str) -> Result<Vec<(String, f32)>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once('=') {
            Some((n, w)) => {
                let weight = w.trim().parse::<f32>().ok().filter(|v| v.abs() <= 10_000.0).ok_or_else(|| {
                    Error::usage(format!(
                        "bad {what} weight '{}' in '{part}': expected a number from -10000 to 10000",
                        w.trim()
                    ))
                })?;
                (n.trim(), weight)
            }
            None => (part, 1.0),
        };
        out.push((name.to_owned(), weight));
    }
    if out.is_empty() {
        let plural = if what.ends_with('s') { format!("{what}es") } else { format!("{what}s") };
        return Err(Error::usage(format!("no {plural} in '{spec}'")));
    }
    Ok(out)
}

/// Parses `block5=1,block10=0.5,block12:97=2` (a bare name weighs 1; `:N` picks channel N).
pub fn parse_layers(spec: &str) -> Result<Vec<LayerTerm>> {
    parse_weighted(spec, "layer")?.into_iter().map(|(n, w)| layer_term(&n, w)).collect()
}

/// Parses `banana`, `954=1,tabby=0.5` into (class index, weight).
pub fn parse_classes(spec: &str) -> Result<Vec<(usize, f32)>> {
    parse_weighted(spec, "class")?.into_iter().map(|(n, w)| Ok((class_index(&n)?, w))).collect()
}

pub fn class_mode(s: &String) -> std::result::Result<ClassMode, String> {
    match s.replace('-', "_").as_str() {
        "log_softmax" => Ok(ClassMode::LogSoftmax),
        "logits" => Ok(ClassMode::Logits),
        _ => Err(format!("class mode must be log_softmax or logits, got '{s}'")),
    }
}

pub fn guide_mode(s: &String) -> std::result::Result<GuideMode, String> {
    match s.as_str() {
        "dot" => Ok(GuideMode::Dot),
        "l2" => Ok(GuideMode::L2),
        _ => Err(format!("guide mode must be dot or l2, got '{s}'")),
    }
}

/// A frame rate: `25`, `29.97` or `30000/1001`, between 0.1 and 1000 frames per second.
pub fn parse_rate(s: &String) -> std::result::Result<Rational, String> {
    Rational::parse_rate(s)
        .filter(|r| (0.1..=1000.0).contains(&r.as_f64()))
        .ok_or_else(|| format!("bad frame rate '{s}': expected e.g. 25, 29.97 or 30000/1001 (0.1 to 1000)"))
}

/// A pan `X,Y` in pixels per frame.
pub fn parse_pan(s: &String) -> std::result::Result<(f64, f64), String> {
    let bad = || format!("bad pan '{s}': expected X,Y in pixels per frame, e.g. 2,-1");
    let (x, y) = s.split_once(',').ok_or_else(bad)?;
    let (x, y) = (x.trim().parse::<f64>().map_err(|_| bad())?, y.trim().parse::<f64>().map_err(|_| bad())?);
    match x.abs() <= 10_000.0 && y.abs() <= 10_000.0 {
        true => Ok((x, y)),
        false => Err(format!("pan '{s}' is out of range: at most 10000 pixels per frame each way")),
    }
}

/// An image size `WxH`, from 16x16 to 4096x4096 (a probe of the whole network at that size).
pub fn parse_size(s: &String) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("bad size '{s}': expected WxH, e.g. 224x224");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h) = (w.trim().parse::<usize>().map_err(|_| bad())?, h.trim().parse::<usize>().map_err(|_| bad())?);
    if w < 16 || h < 16 || w > 4096 || h > 4096 {
        return Err(format!("size {s} is out of range: 16x16 to 4096x4096"));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_classes_parse() {
        let t = parse_layers("block12:97=2,block5").unwrap();
        assert_eq!(t[0], LayerTerm { layer: "block12".into(), channel: Some(97), weight: 2.0, top: None });
        let t = layer_term("mixed4:top3", 1.5).unwrap();
        assert_eq!((t.layer.as_str(), t.top, t.channel), ("mixed4", Some(3), None));
        assert!(layer_term("mixed4:top0", 1.0).is_err() && layer_term("mixed4:topx", 1.0).is_err());
        assert_eq!(parse_classes("954=1,tabby=0.5").unwrap(), vec![(954, 1.0), (281, 0.5)]);
    }

    #[test]
    fn bad_specs_are_errors() {
        assert!(parse_layers("block3=abc").is_err());
        assert!(parse_layers("block3=nan").is_err());
        assert!(parse_layers(" , ").is_err());
        assert!(parse_pan(&"1,inf".into()).is_err());
        assert!(parse_rate(&"0".into()).is_err());
        assert_eq!(parse_size(&"224x100".into()).unwrap(), (224, 100));
        assert!(parse_size(&"8x8".into()).is_err());
    }
}
