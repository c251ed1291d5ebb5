"""The support-ticket triage example job: ``instil.yaml`` (the spec), ``generate.py`` (its seeded data generator),
``phrases.py`` (the phrase tables tickets are composed from) and ``README.md`` (what the data holds)."""
