"""Operations: metrics, rate limits, audit, CDS card lifecycle (issue 11)."""
