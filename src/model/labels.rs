//! The 1000 ImageNet-1k class names, index = line number - 1, compiled into the binary.

const CLASSES: &str = include_str!("../../models/imagenet_classes.txt");

pub fn imagenet() -> Vec<&'static str> {
    CLASSES.lines().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousand_classes() {
        let l = super::imagenet();
        assert_eq!(l.len(), 1000);
        assert_eq!(l[281], "tabby");
    }
}
