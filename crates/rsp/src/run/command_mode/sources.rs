//! Argument sources of command mode: `::: a b c` (values) and `:::: FILE…`
//! (one value per line of each file), combined as GNU parallel does: every
//! combination, the last source varying fastest.

use std::path::Path;

/// One input source: its values in order.
pub type Source = Vec<String>;

/// Parses the words after the template: groups introduced by `:::` or
/// `::::`. Each file after `::::` is a source of its own, as in GNU parallel.
pub fn parse(words: &[String]) -> Result<Vec<Source>, String> {
    let mut sources: Vec<Source> = Vec::new();
    let mut files = false;
    for word in words {
        match word.as_str() {
            ":::" => {
                files = false;
                sources.push(Vec::new());
            }
            "::::" => files = true,
            _ if files => sources.push(read_lines(Path::new(word))?),
            value => match sources.last_mut() {
                Some(source) => source.push(value.to_string()),
                None => return Err(format!("unexpected argument {value:?}: argument lists start with ::: or ::::")),
            },
        }
    }
    Ok(sources)
}

fn read_lines(path: &Path) -> Result<Source, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read argument file {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(crate::run::inputs::strip_bom(&text));
    Ok(text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect())
}

/// Every combination of the sources' values, in GNU parallel's order.
pub struct Product {
    sources: Vec<Source>,
    /// The next combination: an index into each source; None when done.
    next: Option<Vec<usize>>,
}

impl Product {
    /// The combinations of `sources` (none if any source is empty).
    pub fn new(sources: Vec<Source>) -> Product {
        let next = (!sources.is_empty() && sources.iter().all(|s| !s.is_empty())).then(|| vec![0; sources.len()]);
        Product { sources, next }
    }

    /// How many combinations there are (saturating).
    pub fn len(&self) -> u64 {
        if self.next.is_none() {
            return 0;
        }
        self.sources.iter().fold(1u64, |n, s| n.saturating_mul(s.len() as u64))
    }
}

impl Iterator for Product {
    type Item = Vec<String>;

    fn next(&mut self) -> Option<Vec<String>> {
        let current = self.next.as_mut()?;
        let item = current.iter().zip(&self.sources).map(|(&i, s)| s[i].clone()).collect();
        // Odometer: the last source turns fastest.
        let mut done = true;
        for (i, source) in current.iter_mut().zip(&self.sources).rev() {
            *i += 1;
            if *i < source.len() {
                done = false;
                break;
            }
            *i = 0;
        }
        if done {
            self.next = None;
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(String::from).collect()
    }

    #[test]
    fn the_last_source_varies_fastest() {
        let product = Product::new(parse(&words("::: a b ::: 1 2 3")).unwrap());
        assert_eq!(product.len(), 6);
        let got: Vec<String> = product.map(|c| c.join(" ")).collect();
        assert_eq!(got, ["a 1", "a 2", "a 3", "b 1", "b 2", "b 3"]);
        assert_eq!(Product::new(parse(&words("::: a ::: ")).unwrap().into_iter().take(1).collect()).count(), 1);
    }

    #[test]
    fn files_are_sources_of_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let (f1, f2) = (dir.path().join("f1"), dir.path().join("f2"));
        std::fs::write(&f1, "x\r\ny\n").unwrap();
        std::fs::write(&f2, "1\n2").unwrap();
        let args =
            vec!["::::".to_string(), f1.display().to_string(), f2.display().to_string(), ":::".into(), "z".into()];
        let got: Vec<String> = Product::new(parse(&args).unwrap()).map(|c| c.join(" ")).collect();
        assert_eq!(got, ["x 1 z", "x 2 z", "y 1 z", "y 2 z"]);
        let missing = parse(&["::::".to_string(), dir.path().join("nope").display().to_string()]);
        assert!(missing.unwrap_err().contains("cannot read argument file"));
    }

    #[test]
    fn empty_sources_give_nothing_and_stray_words_are_errors() {
        assert_eq!(Product::new(parse(&words(":::")).unwrap()).count(), 0);
        assert_eq!(Product::new(Vec::new()).count(), 0);
        assert!(parse(&words("a ::: b")).unwrap_err().contains("start with :::"));
    }
}
