"""Write the benchmark's PDF report from its text: a form feed starts a new page, a blank line
a new paragraph. A minimal PDF writer (Helvetica, one text object a page), so the benchmark
needs no PDF library beyond the pypdf kbd reads with.

    python bench/qa/make_pdf.py bench/qa/runbook-rb-12.txt bench/qa/reports/runbook-rb-12.pdf
"""

from __future__ import annotations

import sys
from pathlib import Path

LEADING = 14  # points from one line to the next


def pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def page_stream(lines: list[str]) -> str:
    # a blank line moves down twice, so the extracted text keeps the paragraph break
    shown = " ".join("T*" if not line.strip() else f"{pdf_string(line)} Tj T*" for line in lines)
    return f"BT /F1 10 Tf {LEADING} TL 56 760 Td {shown} ET"


def pdf(pages: list[list[str]]) -> bytes:
    page_ids = [4 + 2 * k for k in range(len(pages))]
    objects = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{i} 0 R' for i in page_ids)}] "
           f"/Count {len(pages)} >>",
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for page_id, lines in zip(page_ids, pages, strict=True):
        stream = page_stream(lines)
        objects[page_id] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
                            f"<< /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>")
        objects[page_id + 1] = f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream"
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in objects.items():
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n"
            f"%%EOF\n").encode()
    return bytes(out)


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    pages = [page.strip("\n").split("\n") for page in source.read_text().split("\\f\n")]
    target.write_bytes(pdf(pages))


if __name__ == "__main__":
    main()
