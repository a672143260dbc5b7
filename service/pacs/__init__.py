"""PACS integration over DICOMweb: QIDO-RS queries, WADO-RS retrieval, STOW-RS write-back.

* :mod:`rankiq.service.pacs.dicomweb`: the client (credentials from the environment), series
  queries and streamed retrieval into a private staging folder.
* :mod:`rankiq.service.pacs.qa`: ``rankiq qa --dicomweb`` (the batch QA pipeline fed series by
  series from the PACS) and ``--write-back`` of the results as DICOM objects
  (:mod:`rankiq.service.results_dicom`).

Nothing here logs or reports a UID or a patient attribute: series are named by their
``series_key`` (a hash of the SeriesInstanceUID), as everywhere in RankIQ.
"""
