"""The filter stage: DataComp basic rules, language, exact/near duplicates and CLIP score, one reason per row."""
