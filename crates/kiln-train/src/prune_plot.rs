//! The accuracy-vs-sparsity plot of a `kiln prune` sweep (SVG).
use std::path::Path;

use plotters::prelude::*;

use crate::options::Evaluation;
use crate::prune::PrunedModel;
use crate::TrainError;

/// Draw `figure` (accuracy in percent, or a loss) against sparsity: the pruned models
/// without retraining and after fine-tuning, and the dense model as a dashed line.
pub(crate) fn plot(path: &Path, dense: &Evaluation, models: &[PrunedModel], figure: &str) -> Result<(), TrainError> {
    let err = |e: String| TrainError::Io(format!("plot {}: {e}", path.display()));
    let scale = if figure == "accuracy" { 100.0 } else { 1.0 };
    let value = |e: &Evaluation| e.metric(figure).map(|v| v * scale).filter(|v| v.is_finite());
    let oneshot: Vec<(f64, f64)> = models.iter().filter_map(|m| value(&m.oneshot).map(|v| (m.sparsity * 100.0, v))).collect();
    let finetuned: Vec<(f64, f64)> = models.iter().filter_map(|m| m.finetuned.as_ref().and_then(value).map(|v| (m.sparsity * 100.0, v))).collect();
    let dense_value = value(dense).unwrap_or(0.0);
    let all = oneshot.iter().chain(&finetuned).map(|p| p.1).chain(std::iter::once(dense_value));
    let (low, high) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = ((high - low) * 0.05).max(0.1);
    let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let y_desc = if figure == "accuracy" { "test accuracy (%)".to_string() } else { figure.to_string() };
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{y_desc} vs sparsity of the weight matrices"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..100.0, (low - pad)..(high + pad))
        .map_err(|e| err(e.to_string()))?;
    chart.configure_mesh().x_desc("sparsity (%)").y_desc(y_desc).draw().map_err(|e| err(e.to_string()))?;
    let dashes: Vec<(f64, f64)> = (0..50).flat_map(|i| [(i as f64 * 2.0, dense_value), (i as f64 * 2.0 + 1.0, dense_value)]).collect();
    chart
        .draw_series(dashes.chunks(2).map(|d| PathElement::new(d.to_vec(), BLACK)))
        .map_err(|e| err(e.to_string()))?
        .label("dense")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    let series: [(&[(f64, f64)], &str, RGBColor); 2] = [(&oneshot, "pruned, no retraining", RED), (&finetuned, "pruned and fine-tuned", BLUE)];
    for (points, label, colour) in series {
        if points.is_empty() {
            continue;
        }
        chart.draw_series(LineSeries::new(points.iter().copied(), colour)).map_err(|e| err(e.to_string()))?.label(label).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 16, y)], colour)
        });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(|e| err(e.to_string()))?;
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerLeft).border_style(BLACK).background_style(WHITE).draw().map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}
