"""The person service: owns people and their incomes, assets and debts."""
