/* The search page's summaries, with their math typeset (loaded on search.html only, by conf.py,
 * which loads MathJax there too). Sphinx's searchtools.js quotes 240 characters of a result's
 * page as plain text, so a formula in them would show as the TeX that MathJax typesets on the
 * page: \( ... \) or \[ ... \]. Here a summary drops a formula that the quote cuts in two, holds
 * each whole one in a span that the search highlighting leaves alone (as on the page), shows
 * display math inline, and has MathJax typeset it. */
"use strict";

(() => {
  const DELIMITER = /\\[()[\]]/g;
  const OPENING = ["\\(", "\\["];

  // The summary's text with no formula cut in two at either end.
  const wholeFormulas = (text) => {
    const marks = [...text.matchAll(DELIMITER)];
    if (!marks.length) return text;
    let start = 0;
    let end = text.length;
    const first = marks[0];
    const last = marks[marks.length - 1];
    if (!OPENING.includes(first[0])) start = first.index + 2;  // a formula's end
    if (OPENING.includes(last[0])) end = last.index;  // a formula's start
    if (start === 0 && end === text.length) return text;
    return (start > 0 ? "..." : "") + text.slice(start, end).trim() + (end < text.length ? "..." : "");
  };

  const summarize = Search.makeSearchSummary;
  Search.makeSearchSummary = (htmlText, keywords, anchor) => {
    const summary = summarize(htmlText, keywords, anchor);
    if (!summary) return summary;
    const parts = wholeFormulas(summary.textContent).split(/(\\[([][\s\S]*?\\[)\]])/);
    summary.textContent = "";
    parts.forEach((part, i) => {
      if (i % 2 === 0) {
        summary.append(part);
        return;
      }
      const math = document.createElement("span");
      math.className = "math notranslate nohighlight";
      math.textContent = `\\(${part.slice(2, -2)}\\)`;
      summary.append(math);
    });
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      // Serialized after any typesetting under way, as MathJax's documentation advises.
      MathJax.startup.promise = MathJax.startup.promise
        .then(() => MathJax.typesetPromise([summary]))
        .catch((error) => console.warn("MathJax could not typeset a search summary:", error));
    }
    return summary;
  };
})();
