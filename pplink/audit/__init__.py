"""What an auditor and the public read: ledger verification, the HTML report, the notice, release views."""
