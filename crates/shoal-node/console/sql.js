// Splits SQL text into statements for POST /v1/bases/{id}/execute, which
// takes one statement per entry. Semicolons inside quotes, identifiers,
// comments and trigger bodies (CREATE TRIGGER ... BEGIN ...; ...; END) do not
// split.

export function splitStatements(text) {
  const out = [];
  let start = 0;
  let i = 0;
  const n = text.length;
  // Inside a trigger body: how many BEGIN/CASE are open.
  let depth = 0;
  let words = []; // the statement's first words, upper case (to see CREATE TRIGGER)
  let isTrigger = false;

  const push = (end) => {
    const s = text.slice(start, end).trim();
    if (stripComments(s).trim()) out.push(s);
    words = [];
    isTrigger = false;
    depth = 0;
  };

  while (i < n) {
    const c = text[i];
    if (c === "'" || c === '"' || c === "`") {
      // Quoted string or identifier; a doubled quote is an escaped one.
      i++;
      while (i < n) {
        if (text[i] === c) {
          if (text[i + 1] === c) i += 2;
          else break;
        } else i++;
      }
      i++;
    } else if (c === "[") {
      const j = text.indexOf("]", i + 1);
      i = j < 0 ? n : j + 1;
    } else if (c === "-" && text[i + 1] === "-") {
      const j = text.indexOf("\n", i + 2);
      i = j < 0 ? n : j + 1;
    } else if (c === "/" && text[i + 1] === "*") {
      const j = text.indexOf("*/", i + 2);
      i = j < 0 ? n : j + 2;
    } else if (/[A-Za-z_]/.test(c)) {
      let j = i + 1;
      while (j < n && /[A-Za-z0-9_$]/.test(text[j])) j++;
      const w = text.slice(i, j).toUpperCase();
      if (words.length < 4) {
        words.push(w);
        // CREATE [TEMP|TEMPORARY] TRIGGER
        if (words[0] === "CREATE" && (words[1] === "TRIGGER" || (words[2] === "TRIGGER" && (words[1] === "TEMP" || words[1] === "TEMPORARY")))) {
          isTrigger = true;
        }
      }
      if (isTrigger) {
        if (w === "BEGIN" || w === "CASE") depth++;
        else if (w === "END" && depth > 0) depth--;
      }
      i = j;
    } else if (c === ";") {
      if (!isTrigger || depth === 0) {
        push(i);
        start = i + 1;
      }
      i++;
    } else {
      i++;
    }
  }
  push(n);
  return out;
}

function stripComments(s) {
  return s.replace(/--[^\n]*/g, "").replace(/\/\*[\s\S]*?\*\//g, "");
}
