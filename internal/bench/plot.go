package bench

import (
	"fmt"
	"io"
	"math"
	"time"
)

// palette colours the curves, one per implementation.
var palette = []string{"#7f7f7f", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e"}

// PlotSVG draws the latency distributions of results as cumulative
// distribution curves on a logarithmic time axis, one curve per result.
func PlotSVG(w io.Writer, title string, results []Result) error {
	const width, height, left, right, top, bottom = 1040, 520, 70, 360, 40, 50
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, r := range results {
		if len(r.Latencies) == 0 {
			continue
		}
		lo = math.Min(lo, ms(r.Latencies[0]))
		hi = math.Max(hi, ms(r.Latencies[len(r.Latencies)-1]))
	}
	if math.IsInf(lo, 0) {
		return fmt.Errorf("no latencies to plot")
	}
	lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
	x := func(v float64) float64 {
		return left + (math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*(width-left-right)
	}
	y := func(q float64) float64 { return top + (1-q)*(height-top-bottom) }

	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="13">`+"\n", width, height)
	fmt.Fprintf(w, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(w, `<text x="%d" y="24" font-size="16">%s</text>`+"\n", left, escape(title))
	for d := lo; d <= hi*1.0001; d *= 10 {
		fmt.Fprintf(w, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/><text x="%.1f" y="%d" text-anchor="middle">%g ms</text>`+"\n",
			x(d), top, x(d), height-bottom, x(d), height-bottom+18, d)
	}
	for _, q := range []float64{0, 0.5, 0.9, 0.99} {
		fmt.Fprintf(w, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">p%g</text>`+"\n",
			left, y(q), width-right, y(q), left-6, y(q)+4, q*100)
	}
	fmt.Fprintf(w, `<text x="%d" y="%d" text-anchor="middle">latency of one lock cycle (acquire + release), log scale</text>`+"\n", (width-right+left)/2, height-8)
	for i, r := range results {
		color := palette[i%len(palette)]
		fmt.Fprintf(w, `<polyline fill="none" stroke="%s" stroke-width="2" points="`, color)
		n := len(r.Latencies)
		step := max(1, n/400)
		for j := 0; j < n; j += step {
			fmt.Fprintf(w, "%.1f,%.1f ", x(ms(r.Latencies[j])), y(float64(j+1)/float64(n)))
		}
		fmt.Fprintf(w, "%.1f,%.1f\"/>\n", x(ms(r.Latencies[n-1])), y(1))
		fmt.Fprintf(w, `<rect x="%d" y="%d" width="14" height="4" fill="%s"/><text x="%d" y="%d">%s (p50 %.2f ms)</text>`+"\n",
			width-right+16, top+20*i+6, color, width-right+36, top+20*i+12, escape(r.Impl), ms(r.P50))
	}
	_, err := fmt.Fprintln(w, "</svg>")
	return err
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func escape(s string) string {
	out := make([]rune, 0, len(s))
	for _, r := range s {
		switch r {
		case '<':
			out = append(out, []rune("&lt;")...)
		case '>':
			out = append(out, []rune("&gt;")...)
		case '&':
			out = append(out, []rune("&amp;")...)
		default:
			out = append(out, r)
		}
	}
	return string(out)
}
