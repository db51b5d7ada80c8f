//! The figures: a table for people and one `FIGURE …` line each for machines.

use std::fmt::Write as _;

/// How a figure is judged.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The ratio to the baseline is at least this.
    RatioAtLeast(f64),
    /// The value is below this.
    Below(f64),
    /// The value is at most this.
    AtMost(f64),
}

impl Target {
    fn text(self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("ratio>={r}"),
            Target::Below(v) => format!("<{v}{unit}"),
            Target::AtMost(v) => format!("<={v}{unit}"),
        }
    }
}

/// One measured figure, next to its baseline from the same run.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The baseline's value (same unit) and what it is.
    pub baseline: Option<(f64, String)>,
    pub target: Option<Target>,
    pub note: String,
}

impl Figure {
    pub fn new(name: &str, value: f64, unit: &str) -> Self {
        Self { name: name.into(), value, unit: unit.into(), baseline: None, target: None, note: String::new() }
    }

    pub fn baseline(mut self, value: f64, what: &str) -> Self {
        self.baseline = Some((value, what.into()));
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().and_then(|(b, _)| (*b != 0.0).then(|| self.value / b))
    }

    /// Whether the target is met; `None` without a target (or a ratio target without a baseline).
    pub fn met(&self) -> Option<bool> {
        match self.target? {
            Target::RatioAtLeast(r) => self.ratio().map(|x| x >= r),
            Target::Below(v) => Some(self.value < v),
            Target::AtMost(v) => Some(self.value <= v),
        }
    }

    /// `FIGURE name=value unit=… baseline=… ratio=… target=… met=…`
    pub fn machine_line(&self) -> String {
        let mut line = format!("FIGURE {}={} unit={}", self.name, num(self.value), self.unit);
        match &self.baseline {
            Some((b, _)) => {
                let _ = write!(line, " baseline={}", num(*b));
            }
            None => line.push_str(" baseline=none"),
        }
        match self.ratio() {
            Some(r) => {
                let _ = write!(line, " ratio={r:.3}");
            }
            None => line.push_str(" ratio=none"),
        }
        if let Some(t) = self.target {
            let _ = write!(line, " target={}", t.text(&self.unit));
        }
        match self.met() {
            Some(true) => line.push_str(" met=yes"),
            Some(false) => line.push_str(" met=no"),
            None => {}
        }
        line
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The readable table.
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 7]> = figures
        .iter()
        .map(|f| {
            [
                f.name.clone(),
                format!("{} {}", num(f.value), f.unit),
                f.baseline.as_ref().map_or("-".into(), |(b, what)| format!("{} {} ({what})", num(*b), f.unit)),
                f.ratio().map_or("-".into(), |r| format!("{r:.2}")),
                f.target.map_or("-".into(), |t| t.text(&f.unit)),
                match f.met() {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
                f.note.clone(),
            ]
        })
        .collect();
    let header = ["figure", "value", "baseline (same run)", "ratio", "target", "met", "note"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from), &mut out);
    line(&widths.map(|w| "-".repeat(w)), &mut out);
    for row in &rows {
        line(row, &mut out);
    }
    out
}
