//! The networks' own reverse pass against candle's autograd, on every architecture in the zoo
//! (formula weights, so no download is needed): the same loss, the same input gradient.

use candle_core::{Device, Tensor};
use deepdream::Result;
use deepdream::model::{self, FeatureNet, Features, Loss, Normalization, ZOO, weights::Weights};
use rand::{Rng, SeedableRng, rngs::StdRng};

type LossFn<'a> = &'a dyn Fn(&Features, &Tensor) -> Result<Loss>;

/// Forwards only, so `loss_and_grad` is the trait's default: candle's autograd end to end.
struct CandleOnly<'a>(&'a dyn FeatureNet);

impl FeatureNet for CandleOnly<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn layer_names(&self) -> Vec<String> {
        self.0.layer_names()
    }
    fn normalization(&self) -> Normalization {
        self.0.normalization()
    }
    fn has_classifier(&self) -> bool {
        self.0.has_classifier()
    }
    fn forward(&self, x: &Tensor, taps: &[String], logits: bool) -> Result<Features> {
        self.0.forward(x, taps, logits)
    }
}

#[test]
fn own_backward_matches_candle_autograd_on_every_architecture() {
    let mut checked = Vec::new();
    for info in ZOO {
        // Formula weights where the architecture takes them; the installed weights otherwise
        // (EfficientNet-Lite0's ship in the repository).
        let net = match model::build(info.name, &Weights::formula(), std::path::Path::new("formula")) {
            Ok(net) => net,
            Err(_) => match model::load(info.name) {
                Ok(net) => net,
                Err(_) => continue,
            },
        };
        let names = net.layer_names();
        // A shallow, a middle and the deepest layer, and the classifier where there is one.
        let taps = vec![names[1].clone(), names[names.len() / 2].clone(), names[names.len() - 1].clone()];
        let logits = net.has_classifier();
        // With `direct`, the middle tap's square term hands its gradient in closed form
        // (`Loss::direct`, as the classic layer loss does) instead of through the graph, next
        // to a graph term on the same tap.
        let loss_with = |direct: bool| {
            let taps = &taps;
            move |f: &Features, x: &Tensor| -> Result<Loss> {
                let mut total = (x.sqr()?.mean_all()? * 0.01)?; // a term on the input itself
                let mut grads = Vec::new();
                for (i, t) in taps.iter().enumerate() {
                    let a = &f.taps[t];
                    let k = (i + 1) as f64;
                    if i == 1 {
                        // A graph term on the same tap as the direct one.
                        total = (total + (a.mean_all()? * 0.5)?)?;
                    }
                    if direct && i == 1 {
                        total = (total + (a.detach().sqr()?.mean_all()? * k)?)?;
                        grads.push((t.clone(), (a.detach() * (2.0 * k / a.elem_count() as f64))?));
                    } else {
                        total = (total + (a.sqr()?.mean_all()? * k)?)?;
                    }
                }
                if let Some(l) = &f.logits {
                    total = (total + l.narrow(1, 3, 1)?.sum_all()?)?;
                }
                Ok(Loss { value: total, direct: grads })
            }
        };
        let (loss, direct_loss) = (loss_with(false), loss_with(true));
        // A fixed input. candle's ReLU passes the gradient where its input is exactly 0 (`ge`),
        // PyTorch's and ours do not (`gt`): where a residual sum is 0 + 0 (a zero body output on
        // a zero shortcut), the two subgradients differ. On ResNet-50 with formula weights about
        // one random input in twenty has such a point, so a random input made this test flaky.
        let mut rng = StdRng::seed_from_u64(7);
        let values: Vec<f32> = (0..3 * 101 * 117).map(|_| rng.random_range(-1f32..1f32)).collect();
        let x = Tensor::from_vec(values, (1, 3, 101, 117), &Device::Cpu).unwrap();
        let (ref_loss, reference) = CandleOnly(net.as_ref()).loss_and_grad(&x, &taps, logits, &loss).unwrap();
        let ref_loss = ref_loss.to_scalar::<f32>().unwrap();
        let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let runs: [(&str, &dyn FeatureNet, LossFn); 3] = [
            ("own", net.as_ref(), &loss),
            ("own, a direct gradient", net.as_ref(), &direct_loss),
            ("candle, a direct gradient", &CandleOnly(net.as_ref()), &direct_loss),
        ];
        for (what, n, l) in runs {
            let (own_loss, own) = n.loss_and_grad(&x, &taps, logits, l).unwrap();
            let own_loss = own_loss.to_scalar::<f32>().unwrap();
            let diff = (&own - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                (own_loss - ref_loss).abs() <= 1e-5 * ref_loss.abs().max(1.0),
                "{} ({what}): loss {own_loss} vs {ref_loss}",
                info.name
            );
            assert!(
                scale > 0.0 && diff <= 1e-4 * scale,
                "{} ({what}): gradients differ by {diff} (scale {scale})",
                info.name
            );
        }
        checked.push(info.name);
    }
    eprintln!("checked: {checked:?}");
    // Between them: chains, concatenations, residuals with and without a shortcut conv and a
    // ReLU after the sum, InceptionE's generic backward, pools of both kinds, classifier heads,
    // TF2015's pooling branches pooled after their 1x1 convolution (a ReLU block of its own).
    for needed in ["efficientnet-lite0", "inception-v3", "inception-v3-tf2015", "googlenet", "vgg16", "resnet50"] {
        assert!(checked.contains(&needed), "{needed} was not checked");
    }
}
