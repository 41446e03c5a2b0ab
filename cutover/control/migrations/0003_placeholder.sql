-- PLACEHOLDER (branch i13-fence only): another helper owns migration 0003. This empty step
-- exists so that 0004 applies in order on this branch; the lead drops this file at merge.
SELECT 1;
