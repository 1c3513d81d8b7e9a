{% snapshot customer_tiers_snapshot %}
{{ config(target_schema='snapshots', unique_key='customer_key', strategy='check', check_cols=['tier']) }}
select * from {{ ref('customer_tiers') }}
{% endsnapshot %}
