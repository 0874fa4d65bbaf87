//! PNG bar charts for the benchmark report, drawn with `plotters`.
//!
//! [`render_png`] draws one or more grouped bar charts ([`BarChart`]) stacked
//! vertically into a single PNG file. Text is rendered with a TrueType font
//! loaded at run time from a path given by the caller (normally DejaVu Sans
//! from Debian's `fonts-dejavu-core` package, see [`DEFAULT_FONT_PATH`]),
//! because plotters' `ab_glyph` backend has no access to system fonts.

use std::collections::HashMap;
use std::fmt::Display;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};
use thiserror::Error;

/// Width of the PNG in pixels.
pub const CHART_WIDTH: u32 = 1400;

/// Height of each chart in pixels; the PNG is this times the number of charts.
pub const CHART_HEIGHT: u32 = 500;

/// The most charts one PNG may hold (keeps the bitmap to a sane size).
pub const MAX_CHARTS: usize = 32;

/// Where Debian's `fonts-dejavu-core` package installs DejaVu Sans.
pub const DEFAULT_FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Fraction of the tallest bar (or reference line) added above it on the y axis.
const HEADROOM: f64 = 0.15;
/// Space around each chart, in pixels.
const MARGIN: u32 = 12;
// Font sizes are even: plotters' ab_glyph renderer truncates `size / 2` when
// placing each glyph, which at odd sizes lifts small glyphs such as `.` off
// the baseline.
const TITLE_FONT_SIZE: f64 = 24.0;
const LEGEND_FONT_SIZE: f64 = 16.0;
const AXIS_DESC_FONT_SIZE: f64 = 16.0;
const TICK_FONT_SIZE: f64 = 14.0;
const CATEGORY_FONT_SIZE: f64 = 16.0;
const VALUE_FONT_SIZE: f64 = 12.0;
const LEGEND_ROW_HEIGHT: u32 = 24;
/// Pixels between the legend and the plot.
const LEGEND_PADDING: u32 = 6;
const LEGEND_SWATCH: i32 = 14;
const X_LABEL_AREA: u32 = 34;
const Y_LABEL_AREA: u32 = 80;
/// Fraction of each category's slot taken by its group of bars.
const GROUP_WIDTH: f64 = 0.84;
/// Fraction of each bar's slot left empty on either side of the bar.
const BAR_GAP: f64 = 0.06;
/// Pixels between the top of a bar and its value label.
const VALUE_OFFSET: i32 = 3;
/// Pixels a vertical value label is moved right to centre it on its bar:
/// plotters' ab_glyph renderer draws digits about this much above the centre
/// of the text box it reports.
const VERTICAL_LABEL_NUDGE: i32 = 2;

/// Distinct bar colours (Tableau 10); series beyond ten reuse them in order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A grouped bar chart: one group per category (e.g. a language), one bar per
/// series (e.g. a mode) in each group.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// Title drawn above the chart.
    pub title: String,
    /// Description of the y axis (e.g. "tokens/s").
    pub y_label: String,
    /// Category names, one group of bars each, labelled under the x axis.
    pub categories: Vec<String>,
    /// The series, one bar per category each, named in the legend.
    pub series: Vec<Series>,
    /// A horizontal reference line (e.g. 1.0 for "as fast as target-only"), if any.
    pub reference_line: Option<f64>,
}

/// One series of a [`BarChart`]: a bar of one colour in each category's group.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Name shown in the legend.
    pub name: String,
    /// One value per category, in the order of [`BarChart::categories`];
    /// `None` means not measured and draws no bar. Values must be finite and
    /// not negative.
    pub values: Vec<Option<f64>>,
}

/// Why [`render_png`] could not draw the charts.
#[derive(Debug, Error)]
pub enum ChartError {
    /// `render_png` was given no charts.
    #[error("no charts to draw")]
    NoCharts,
    /// More charts than [`MAX_CHARTS`] were given.
    #[error("{count} charts is too many for one PNG (at most {MAX_CHARTS})")]
    TooManyCharts {
        /// How many charts were given.
        count: usize,
    },
    /// A chart has no categories.
    #[error("chart `{chart}` has no categories")]
    NoCategories {
        /// The chart's title.
        chart: String,
    },
    /// A chart has no series.
    #[error("chart `{chart}` has no series")]
    NoSeries {
        /// The chart's title.
        chart: String,
    },
    /// A series does not have exactly one value per category.
    #[error("chart `{chart}`: series `{series}` has {got} values for {expected} categories")]
    LengthMismatch {
        /// The chart's title.
        chart: String,
        /// The series' name.
        series: String,
        /// The number of categories.
        expected: usize,
        /// The number of values the series has.
        got: usize,
    },
    /// A value is NaN, infinite or negative.
    #[error(
        "chart `{chart}`: series `{series}` has value {value} for category `{category}`; \
         values must be finite and not negative"
    )]
    InvalidValue {
        /// The chart's title.
        chart: String,
        /// The series' name.
        series: String,
        /// The category's name.
        category: String,
        /// The offending value.
        value: f64,
    },
    /// The reference line is NaN, infinite or negative.
    #[error("chart `{chart}`: reference line {value} must be finite and not negative")]
    InvalidReferenceLine {
        /// The chart's title.
        chart: String,
        /// The offending value.
        value: f64,
    },
    /// The font file could not be read.
    #[error(
        "cannot read font file {}: {source}; install Debian's `fonts-dejavu-core` package \
         (it provides {DEFAULT_FONT_PATH}) or pass the path of another TrueType font",
        path.display()
    )]
    FontUnreadable {
        /// The font path given.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The font file is not a TrueType/OpenType font.
    #[error(
        "{} is not a TrueType/OpenType font; install Debian's `fonts-dejavu-core` package \
         (it provides {DEFAULT_FONT_PATH}) or pass the path of another TrueType font",
        path.display()
    )]
    InvalidFont {
        /// The font path given.
        path: PathBuf,
    },
    /// Drawing or writing the PNG failed.
    #[error("cannot draw {}: {message}", path.display())]
    Draw {
        /// The PNG path.
        path: PathBuf,
        /// What plotters reported.
        message: String,
    },
}

impl BarChart {
    /// Checks that the chart has categories and series, that every series has
    /// one value per category, and that every value is finite and not negative.
    pub fn validate(&self) -> Result<(), ChartError> {
        if self.categories.is_empty() {
            return Err(ChartError::NoCategories {
                chart: self.title.clone(),
            });
        }
        if self.series.is_empty() {
            return Err(ChartError::NoSeries {
                chart: self.title.clone(),
            });
        }
        for series in &self.series {
            if series.values.len() != self.categories.len() {
                return Err(ChartError::LengthMismatch {
                    chart: self.title.clone(),
                    series: series.name.clone(),
                    expected: self.categories.len(),
                    got: series.values.len(),
                });
            }
            for (category, value) in self.categories.iter().zip(&series.values) {
                if let Some(value) = *value {
                    if !is_valid_value(value) {
                        return Err(ChartError::InvalidValue {
                            chart: self.title.clone(),
                            series: series.name.clone(),
                            category: category.clone(),
                            value,
                        });
                    }
                }
            }
        }
        if let Some(value) = self.reference_line {
            if !is_valid_value(value) {
                return Err(ChartError::InvalidReferenceLine {
                    chart: self.title.clone(),
                    value,
                });
            }
        }
        Ok(())
    }

    /// The largest value drawn: the tallest bar or the reference line.
    fn max_value(&self) -> f64 {
        self.series
            .iter()
            .flat_map(|series| series.values.iter().flatten())
            .copied()
            .chain(self.reference_line)
            .fold(0.0, f64::max)
    }
}

fn is_valid_value(value: f64) -> bool {
    value.is_finite() && value >= 0.0
}

/// Draws `charts` stacked vertically into one PNG at `path`, each
/// [`CHART_WIDTH`] × [`CHART_HEIGHT`] pixels, with text in the TrueType font
/// at `font` (normally [`DEFAULT_FONT_PATH`]).
///
/// Every chart is validated (see [`BarChart::validate`]) before anything is
/// drawn. The font is registered with plotters once per process and path.
pub fn render_png(charts: &[BarChart], font: &Path, path: &Path) -> Result<(), ChartError> {
    if charts.is_empty() {
        return Err(ChartError::NoCharts);
    }
    if charts.len() > MAX_CHARTS {
        return Err(ChartError::TooManyCharts {
            count: charts.len(),
        });
    }
    for chart in charts {
        chart.validate()?;
    }
    let family = font_family(font)?;
    let draw_error = |e: &dyn Display| ChartError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    };

    // At most MAX_CHARTS charts, so this cannot overflow.
    let height = CHART_HEIGHT * charts.len() as u32;
    let root = BitMapBackend::new(path, (CHART_WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_error(&e))?;
    for (chart, area) in charts.iter().zip(root.split_evenly((charts.len(), 1))) {
        draw_chart(chart, &area, family).map_err(|e| draw_error(&e))?;
    }
    root.present().map_err(|e| draw_error(&e))
}

/// Registers the font at `path` with plotters (once per process and path)
/// and returns the family name it is registered under.
fn font_family(path: &Path) -> Result<&'static str, ChartError> {
    static REGISTERED: OnceLock<Mutex<HashMap<PathBuf, &'static str>>> = OnceLock::new();
    let mut registered = REGISTERED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(family) = registered.get(path) {
        return Ok(family);
    }

    let bytes = std::fs::read(path).map_err(|source| ChartError::FontUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    // Reject obviously wrong files before leaking them; plotters checks the rest.
    let magic = bytes.get(..4).unwrap_or_default();
    let known: [&[u8]; 4] = [b"\0\x01\0\0", b"OTTO", b"true", b"ttcf"];
    if !known.contains(&magic) {
        return Err(ChartError::InvalidFont {
            path: path.to_path_buf(),
        });
    }
    // plotters wants `'static` font data: leak it, once per font path.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let family: &'static str =
        Box::leak(format!("specdec-bench-font-{}", registered.len()).into_boxed_str());
    register_font(family, FontStyle::Normal, bytes).map_err(|_| ChartError::InvalidFont {
        path: path.to_path_buf(),
    })?;
    registered.insert(path.to_path_buf(), family);
    Ok(family)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;
type DrawResult = Result<(), DrawError>;

fn text_style(family: &str, size: f64) -> TextStyle<'_> {
    TextStyle::from((family, size).into_font()).color(&BLACK)
}

fn series_color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// One entry of the legend: a coloured square or a dashed line, then a name.
struct LegendEntry {
    label: String,
    color: Option<RGBColor>,
}

/// The x axis: category `i` spans `i..i + 1`, with its tick and label at
/// `i + 0.5`.
#[derive(Debug, Clone, Copy)]
struct CategoryAxis {
    count: usize,
}

impl Ranged for CategoryAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let fraction = value / self.count as f64;
        limit.0 + (f64::from(limit.1 - limit.0) * fraction).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.count).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.count as f64
    }
}

/// A bar's value label, measured in pixels before any rotation.
struct ValueLabel {
    category: usize,
    series: usize,
    value: f64,
    text: String,
    width: i32,
    height: i32,
}

/// The x extent of the bar of `series` (of `n_series`) in `category`'s group.
fn bar_span(category: usize, series: usize, n_series: usize) -> (f64, f64) {
    let slot = GROUP_WIDTH / n_series as f64;
    let left = category as f64 + (1.0 - GROUP_WIDTH) / 2.0 + series as f64 * slot;
    (left + slot * BAR_GAP, left + slot * (1.0 - BAR_GAP))
}

fn legend_entries(chart: &BarChart) -> Vec<LegendEntry> {
    let mut legend: Vec<LegendEntry> = chart
        .series
        .iter()
        .enumerate()
        .map(|(i, series)| LegendEntry {
            label: series.name.clone(),
            color: Some(series_color(i)),
        })
        .collect();
    if let Some(reference) = chart.reference_line {
        legend.push(LegendEntry {
            label: format!("reference: {reference:.2}"),
            color: None,
        });
    }
    legend
}

fn value_labels(
    chart: &BarChart,
    area: &Area<'_>,
    style: &TextStyle<'_>,
) -> Result<Vec<ValueLabel>, DrawError> {
    let mut labels = Vec::new();
    for (series, values) in chart.series.iter().enumerate() {
        for (category, value) in values.values.iter().enumerate() {
            if let Some(value) = *value {
                let text = format!("{value:.2}");
                let (width, height) = area.estimate_text_size(&text, style)?;
                labels.push(ValueLabel {
                    category,
                    series,
                    value,
                    width: i32::try_from(width).unwrap_or(i32::MAX / 4),
                    height: i32::try_from(height).unwrap_or(i32::MAX / 4),
                    text,
                });
            }
        }
    }
    Ok(labels)
}

fn draw_chart(chart: &BarChart, area: &Area<'_>, family: &str) -> DrawResult {
    let area = area.margin(MARGIN, MARGIN / 2, MARGIN, MARGIN);
    let area = area.titled(&chart.title, text_style(family, TITLE_FONT_SIZE))?;

    let legend = legend_entries(chart);
    let rows = legend_rows(&area, &legend, family)?;
    let legend_height = LEGEND_ROW_HEIGHT * rows.len() as u32 + LEGEND_PADDING;
    let (legend_area, plot_area) = area.split_vertically(legend_height);
    draw_legend(&legend_area, &legend, &rows, family)?;

    let n = chart.categories.len();
    let n_series = chart.series.len();
    let value_style = text_style(family, VALUE_FONT_SIZE);
    let labels = value_labels(chart, &plot_area, &value_style)?;

    // Value labels are written horizontally if they fit between the centres
    // of neighbouring bars, vertically otherwise.
    let (plot_w, plot_h) = plot_area.dim_in_pixel();
    let plot_w = f64::from(plot_w.saturating_sub(Y_LABEL_AREA + MARGIN));
    let plot_h = f64::from(plot_h.saturating_sub(X_LABEL_AREA + MARGIN)).max(1.0);
    let slot_px = plot_w / n as f64 * GROUP_WIDTH / n_series as f64;
    let widest_label = labels.iter().map(|l| l.width).max().unwrap_or(0);
    let vertical_labels = f64::from(widest_label + 4) > slot_px;

    // The y axis starts at 0 and leaves HEADROOM above the tallest bar, more
    // if the value labels would not fit in that.
    let max = chart.max_value();
    let label_px = if vertical_labels {
        f64::from(widest_label)
    } else {
        VALUE_FONT_SIZE
    } + f64::from(VALUE_OFFSET + 6);
    let y_top = if max > 0.0 {
        let fitting_labels = max / (1.0 - (label_px / plot_h).min(0.5));
        (max * (1.0 + HEADROOM)).max(fitting_labels)
    } else {
        1.0
    };

    let mut ctx = ChartBuilder::on(&plot_area)
        .margin(MARGIN / 2)
        .margin_right(MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(CategoryAxis { count: n }, 0.0..y_top)?;

    let category_label = |x: &f64| {
        let i = (x.max(0.0).floor() as usize).min(n - 1);
        chart.categories[i].clone()
    };
    let y_decimals = if y_top <= 2.0 {
        2
    } else if y_top <= 20.0 {
        1
    } else {
        0
    };
    let y_label = |y: &f64| format!("{y:.y_decimals$}");
    ctx.configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .x_labels(n)
        .x_label_formatter(&category_label)
        .x_label_style(text_style(family, CATEGORY_FONT_SIZE))
        .y_labels(8)
        .y_label_formatter(&y_label)
        .y_label_style(text_style(family, TICK_FONT_SIZE))
        .y_desc(chart.y_label.as_str())
        .axis_desc_style(text_style(family, AXIS_DESC_FONT_SIZE))
        .draw()?;

    for (s, series) in chart.series.iter().enumerate() {
        let color = series_color(s).filled();
        ctx.draw_series(series.values.iter().enumerate().filter_map(|(c, v)| {
            let (x0, x1) = bar_span(c, s, n_series);
            Some(Rectangle::new([(x0, 0.0), (x1, (*v)?)], color))
        }))?;
    }

    // The reference line goes over the bars but under the value labels.
    if let Some(reference) = chart.reference_line {
        ctx.draw_series(DashedLineSeries::new(
            [(0.0, reference), (n as f64, reference)],
            8,
            5,
            BLACK.stroke_width(1),
        ))?;
    }

    // Value labels go last, on a white background so that the reference line
    // does not run through them.
    let value_style = if vertical_labels {
        value_style
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Left, VPos::Center))
    } else {
        value_style.pos(Pos::new(HPos::Center, VPos::Bottom))
    };
    ctx.draw_series(labels.iter().map(|label| {
        let (w, h) = (label.width, label.height);
        let (text_pos, background) = if vertical_labels {
            (
                (VERTICAL_LABEL_NUDGE, -VALUE_OFFSET),
                [
                    (-h / 2 - 1, -VALUE_OFFSET - w - 2),
                    (h / 2 + 1, -VALUE_OFFSET + 1),
                ],
            )
        } else {
            (
                (0, -VALUE_OFFSET),
                [
                    (-w / 2 - 1, -VALUE_OFFSET - h - 4),
                    (w / 2 + 1, -VALUE_OFFSET),
                ],
            )
        };
        let (x0, x1) = bar_span(label.category, label.series, n_series);
        EmptyElement::at(((x0 + x1) / 2.0, label.value))
            + Rectangle::new(background, WHITE.filled())
            + Text::new(label.text.clone(), text_pos, value_style.clone())
    }))?;
    Ok(())
}

/// Width in pixels of a legend entry's marker (a square for a series, a
/// short dashed line for the reference line).
fn legend_marker_width(entry: &LegendEntry) -> i32 {
    if entry.color.is_some() {
        LEGEND_SWATCH
    } else {
        3 * LEGEND_SWATCH
    }
}

/// Pixels between a legend marker and its label.
const LEGEND_MARKER_GAP: i32 = 6;
/// Pixels between legend entries on a row.
const LEGEND_ENTRY_GAP: i32 = 28;

/// A row of the legend: the indices of its entries and each entry's width.
type LegendRow = Vec<(usize, i32)>;

/// Splits the legend entries into rows that fit the area's width.
fn legend_rows(
    area: &Area<'_>,
    legend: &[LegendEntry],
    family: &str,
) -> Result<Vec<LegendRow>, DrawError> {
    let style = text_style(family, LEGEND_FONT_SIZE);
    let max_width = i32::try_from(area.dim_in_pixel().0).unwrap_or(i32::MAX);
    let mut rows: Vec<LegendRow> = vec![Vec::new()];
    let mut row_width = 0;
    for (i, entry) in legend.iter().enumerate() {
        let (text_w, _) = area.estimate_text_size(&entry.label, &style)?;
        let width = legend_marker_width(entry)
            + LEGEND_MARKER_GAP
            + i32::try_from(text_w).unwrap_or(i32::MAX / 2);
        let row = rows
            .last_mut()
            .filter(|row| row.is_empty() || row_width + LEGEND_ENTRY_GAP + width <= max_width);
        match row {
            Some(row) => {
                if !row.is_empty() {
                    row_width += LEGEND_ENTRY_GAP;
                }
                row_width += width;
                row.push((i, width));
            }
            None => {
                rows.push(vec![(i, width)]);
                row_width = width;
            }
        }
    }
    Ok(rows)
}

/// Draws the legend rows, each centred horizontally.
fn draw_legend(
    area: &Area<'_>,
    legend: &[LegendEntry],
    rows: &[LegendRow],
    family: &str,
) -> DrawResult {
    let style = text_style(family, LEGEND_FONT_SIZE).pos(Pos::new(HPos::Left, VPos::Center));
    let area_w = i32::try_from(area.dim_in_pixel().0).unwrap_or(i32::MAX);
    let row_h = LEGEND_ROW_HEIGHT as i32;
    for (r, row) in rows.iter().enumerate() {
        let row_w: i32 = row.iter().map(|(_, w)| w).sum::<i32>()
            + LEGEND_ENTRY_GAP * (row.len() as i32 - 1).max(0);
        let y = r as i32 * row_h + row_h / 2;
        let mut x = ((area_w - row_w) / 2).max(0);
        for &(i, width) in row {
            let entry = &legend[i];
            let half = LEGEND_SWATCH / 2;
            match entry.color {
                Some(color) => area.draw(&Rectangle::new(
                    [(x, y - half), (x + LEGEND_SWATCH, y + half)],
                    color.filled(),
                ))?,
                None => {
                    let end = x + legend_marker_width(entry);
                    area.draw(&plotters::element::DashedPathElement::new(
                        [(x, y), (end, y)],
                        8,
                        5,
                        BLACK.stroke_width(1),
                    ))?
                }
            }
            let text_x = x + legend_marker_width(entry) + LEGEND_MARKER_GAP;
            area.draw_text(&entry.label, &style, (text_x, y))?;
            x += width + LEGEND_ENTRY_GAP;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    fn font() -> &'static Path {
        Path::new(DEFAULT_FONT_PATH)
    }

    /// A unique path in the temporary directory.
    fn temp_png(name: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "specdec-bench-chart-{}-{n}-{name}.png",
            std::process::id()
        ))
    }

    /// Width and height from the PNG's IHDR chunk.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert!(bytes.len() >= 24, "PNG too short");
        assert_eq!(&bytes[12..16], b"IHDR");
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        (width, height)
    }

    fn speedup_chart() -> BarChart {
        let categories = ["en", "zh", "ja", "ko", "de", "fr", "es", "ru"];
        let modes = [
            "target-only",
            "draft-model",
            "n-gram",
            "eagle",
            "llama-server",
            "llama-server + draft",
        ];
        let series = modes
            .iter()
            .enumerate()
            .map(|(s, mode)| Series {
                name: mode.to_string(),
                values: (0..categories.len())
                    .map(|c| {
                        if s == 3 && c == 2 {
                            None // not measured
                        } else {
                            Some(0.6 + 0.37 * s as f64 + 0.11 * c as f64)
                        }
                    })
                    .collect(),
            })
            .collect();
        BarChart {
            title: "Speed-up over target-only decoding".to_string(),
            y_label: "speed-up (x)".to_string(),
            categories: categories.iter().map(|c| c.to_string()).collect(),
            series,
            reference_line: Some(1.0),
        }
    }

    fn throughput_chart() -> BarChart {
        BarChart {
            title: "Throughput".to_string(),
            y_label: "tokens/s".to_string(),
            categories: vec!["en".to_string(), "zh".to_string(), "ja".to_string()],
            series: vec![
                Series {
                    name: "specdec".to_string(),
                    values: vec![Some(123.456), Some(98.7), Some(0.0)],
                },
                Series {
                    name: "llama-server".to_string(),
                    values: vec![Some(87.0), None, Some(1234.5)],
                },
            ],
            reference_line: None,
        }
    }

    #[test]
    fn renders_stacked_charts() {
        let path = temp_png("stacked");
        render_png(&[speedup_chart(), throughput_chart()], font(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes[..8], PNG_SIGNATURE);
        assert_eq!(png_size(&bytes), (CHART_WIDTH, 2 * CHART_HEIGHT));
        assert_eq!(png_size(&bytes), (1400, 1000));
    }

    #[test]
    fn renders_twice_with_one_registration() {
        for _ in 0..2 {
            let path = temp_png("again");
            render_png(&[throughput_chart()], font(), &path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            assert_eq!(png_size(&bytes), (1400, 500));
        }
    }

    #[test]
    fn rejects_mismatched_lengths() {
        let mut chart = speedup_chart();
        chart.series[2].values.pop();
        let path = temp_png("mismatch");
        let err = render_png(&[chart], font(), &path).unwrap_err();
        assert!(
            matches!(
                &err,
                ChartError::LengthMismatch { series, expected: 8, got: 7, .. } if series == "n-gram"
            ),
            "{err:?}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [f64::NAN, -0.5, f64::INFINITY, f64::NEG_INFINITY] {
            let mut chart = throughput_chart();
            chart.series[1].values[2] = Some(bad);
            let err = render_png(&[chart], font(), &temp_png("invalid")).unwrap_err();
            assert!(
                matches!(&err, ChartError::InvalidValue { category, .. } if category == "ja"),
                "{bad}: {err:?}"
            );
        }
        let mut chart = throughput_chart();
        chart.reference_line = Some(f64::NAN);
        let err = render_png(&[chart], font(), &temp_png("invalid")).unwrap_err();
        assert!(
            matches!(err, ChartError::InvalidReferenceLine { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_empty_input() {
        let path = temp_png("empty");
        assert!(matches!(
            render_png(&[], font(), &path),
            Err(ChartError::NoCharts)
        ));
        let mut chart = throughput_chart();
        chart.categories.clear();
        for series in &mut chart.series {
            series.values.clear();
        }
        assert!(matches!(
            render_png(&[chart], font(), &path),
            Err(ChartError::NoCategories { .. })
        ));
        let mut chart = throughput_chart();
        chart.series.clear();
        assert!(matches!(
            render_png(&[chart], font(), &path),
            Err(ChartError::NoSeries { .. })
        ));
        assert!(!path.exists());
    }

    #[test]
    fn missing_or_bad_font_names_the_package() {
        let path = temp_png("font");
        let missing = std::env::temp_dir().join("specdec-bench-no-such-font.ttf");
        let err = render_png(&[throughput_chart()], &missing, &path).unwrap_err();
        assert!(matches!(err, ChartError::FontUnreadable { .. }), "{err:?}");
        assert!(err.to_string().contains("fonts-dejavu-core"), "{err}");

        let not_a_font = temp_png("not-a-font");
        std::fs::write(&not_a_font, b"definitely not a font").unwrap();
        let err = render_png(&[throughput_chart()], &not_a_font, &path).unwrap_err();
        std::fs::remove_file(&not_a_font).unwrap();
        assert!(matches!(err, ChartError::InvalidFont { .. }), "{err:?}");
        assert!(err.to_string().contains("fonts-dejavu-core"), "{err}");
        assert!(!path.exists());
    }

    /// Writes a sample to the temporary directory for a look by eye:
    /// `cargo test --release -p specdec-bench -- --ignored write_sample`.
    #[test]
    #[ignore = "writes chart-sample.png to the temporary directory for inspection"]
    fn write_sample() {
        let path = std::env::temp_dir().join("chart-sample.png");
        render_png(&[speedup_chart(), throughput_chart()], font(), &path).unwrap();
        eprintln!("wrote {}", path.display());
    }
}
